"""Autoregressive WaveNet generation: cached dilated-conv state against naive generation that
re-runs the receptive field for every sample. Both draw from the same random numbers, and the
script checks that they give the same samples.

    python bench/wavenet_generation.py                  # the demo's decoder and the paper's
    python bench/wavenet_generation.py --threads 2 --batch 8 --seconds 0.25

Prints samples/s (batch x steps per second of wall time) for each decoder and method.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.models.speech import SpeechVQVAE  # noqa: E402

DECODERS = {  # name -> (SpeechVQVAE arguments, sample rate)
    "demo (8 kHz, 10 layers x 32 ch)": (dict(wavenet_channels=32, wavenet_skip=64, wavenet_layers=10,
                                             wavenet_cycle=10, cond_channels=32, code_dim=32, speaker_dim=16), 8000),
    "paper-size (16 kHz, 20 layers x 64 ch)": (dict(), 16000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.25, help="audio generated per sample")
    parser.add_argument("--naive-seconds", type=float, default=0.05, help="naive generation is slow: shorter")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch}")
    for name, (kwargs, rate) in DECODERS.items():
        torch.manual_seed(0)
        model = SpeechVQVAE(num_speakers=4, **kwargs).to(device).eval()
        net, hop = model.decoder, model.hop
        speakers = torch.arange(args.batch, device=device) % 4
        glob = model.speaker_embedding(speakers)

        def local_for(steps: int):
            codes = torch.randint(0, model.vq.codebook_size, (args.batch, -(-steps // hop)), device=device)
            return model.cond_net(model.vq.embed(codes))

        with torch.no_grad():
            # the same draws: naive and cached must agree sample for sample
            steps = max(hop, int(args.naive_seconds * rate))
            local = local_for(steps)
            start = time.perf_counter()
            naive = net.generate_naive(steps, local, glob, generator=torch.Generator(device).manual_seed(1), hop=hop)
            naive_rate = naive.numel() / (time.perf_counter() - start)
            cached = net.generate(steps, local, glob, generator=torch.Generator(device).manual_seed(1), hop=hop)
            agree = (cached == naive).float().mean().item()
            # cached speed over a longer stretch
            steps = int(args.seconds * rate)
            local = local_for(steps)
            start = time.perf_counter()
            out = net.generate(steps, local, glob, generator=torch.Generator(device).manual_seed(2), hop=hop)
            if device.type == "cuda":
                torch.cuda.synchronize()
            cached_rate = out.numel() / (time.perf_counter() - start)
        print(f"{name}: receptive field {net.receptive_field} samples; cached {cached_rate:,.0f} samples/s "
              f"({cached_rate / args.batch / rate:.3f} x real time per utterance), naive {naive_rate:,.0f} "
              f"samples/s; cached/naive {cached_rate / naive_rate:.1f}x; same samples: {agree:.1%}")


if __name__ == "__main__":
    main()
