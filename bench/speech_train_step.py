"""Stage 1 speech: seconds per training step (forward, backward, Adam) of the speech VQ-VAE, the
demo's decoder and the paper's, with the decoder's input read as a scalar (the default) and as an
embedding table.

    python bench/speech_train_step.py [--threads 2] [--steps 10] [--only demo]

Batch and crop as the configs train: the demo 8 x 2048 samples, the paper-size 16 x 16384 (on 2 CPU
cores several seconds a step: `--only demo` skips it). Prints s/step and training samples/s; the
first steps (warm-up) are not timed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.models.speech import SpeechVQVAE  # noqa: E402

MODELS = {  # name -> (SpeechVQVAE arguments, batch, crop)
    "demo (configs/demo-speech.yaml)": (dict(codebook_size=128, code_dim=32, hidden=64, ema=True, speaker_dim=16,
                                            wavenet_channels=32, wavenet_skip=64, wavenet_layers=10,
                                            wavenet_cycle=10, cond_channels=32, lpc_order=16), 8, 2048),
    "paper-size (the defaults)": (dict(), 16, 16384),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", choices=["demo", "paper"], help="one of the two models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, {torch.get_num_threads()} threads", flush=True)
    for name, (kwargs, batch, crop) in MODELS.items():
        if args.only and not name.startswith(args.only):
            continue
        for scalar in (True, False):
            torch.manual_seed(0)
            model = SpeechVQVAE(num_speakers=10, scalar_input=scalar, **kwargs).to(device)
            opt = torch.optim.Adam(model.parameters(), 1e-3)
            x = (torch.randn(batch, 1, crop, device=device) * 0.3).clamp(-1, 1)
            cond = {"speaker": torch.arange(batch, device=device) % 10}
            for i in range(args.warmup + args.steps):
                if i == args.warmup:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                out = model(x, cond)
                opt.zero_grad()
                out.loss.backward()
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.perf_counter() - start) / args.steps
            print(f"{name}, {'scalar' if scalar else 'embedding'} input: {per_step:.3f} s/step, "
                  f"{batch * crop / per_step:,.0f} training samples/s", flush=True)


if __name__ == "__main__":
    main()
