"""pipeline.runtime.keep_freed_memory, measured on a fresh interpreter the way a Ray Train worker
runs the loop: in a thread that has already allocated, so it has its own malloc arena."""
import json
import subprocess
import sys

from conftest import REPO

SCRIPT = """
import json, resource, sys, threading
import torch
sys.path.insert(0, {root!r})
from pipeline.models.vqvae import VQVAE
from pipeline.runtime import keep_freed_memory

def loop():
    warm = torch.ones(1000); del warm  # small: a freed mmap block would raise glibc's threshold itself
    kept = keep_freed_memory() if sys.argv[1] == "keep" else None
    torch.manual_seed(0)
    model = VQVAE(in_channels=3, spatial_dims=2, hidden=64, num_downsamples=2, codebook_size=64, code_dim=16)
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.rand(64, 3, 32, 32)  # the demo's batch
    def step():
        loss = model(x).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for _ in range(3):
        step()  # warm-up: first allocations always fault their pages in
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print(json.dumps({{"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}}))

t = threading.Thread(target=loop)
t.start()
t.join()
"""


def faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(REPO)), mode], capture_output=True,
                         text=True, check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_keep_freed_memory_stops_the_page_faults_of_every_training_step():
    default, kept = faults("default"), faults("keep")
    assert kept["kept"] is True  # glibc (Linux): mallopt took every setting
    # glibc's defaults: the steps fault their activations in again (30 000-76 000 faults seen)
    assert default["faults"] > 10 * 2000, default
    assert kept["faults"] < default["faults"] / 20, (kept, default)
