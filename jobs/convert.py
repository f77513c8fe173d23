"""Voice conversion: a speech utterance's codes decoded with another speaker's id.

    python jobs/convert.py --config configs/demo-speech.yaml --source p901_003 --speaker p905
    python jobs/convert.py --config configs/demo-speech.yaml --source my.wav --speaker p905 --seconds 2
    python jobs/convert.py --config configs/demo-speech.yaml --evaluate   # the scores, on the model's run

--source: a val utterance's key, or an audio file (WAV, FLAC, OGG; resampled to data.sample_rate).
--speaker: a speaker of the dataset, by name (p225) or id. --seconds: only the source's first
seconds (generation runs sample by sample: a few seconds of speech take a while on a CPU).
The model: codes.model, else the VQ-VAE champion. Writes
<workdir>/conversions/<source>-to-<speaker>.{wav,png}.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ray job submit --working-dir .`

from pipeline.cli import run_job  # noqa: E402
from pipeline.errors import UserError  # noqa: E402


def add_arguments(parser) -> None:
    parser.add_argument("--source", help="a val utterance's key or an audio file")
    parser.add_argument("--speaker", help="the target speaker: name or id")
    parser.add_argument("--seconds", type=float, help="convert only the source's first seconds (default: all)")
    parser.add_argument("--out", help="folder for the results (default <workdir>/conversions)")
    parser.add_argument("--evaluate", action="store_true",
                        help="score conversions of val utterances and log them on the model's MLflow run")


def main(settings, args) -> None:
    from pipeline.modalities import speech_convert as convert

    if args.evaluate:
        metrics = convert.evaluate_and_log(settings, settings.codes.model or settings.vqvae_champion, force=True)
        print("convert: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())), flush=True)
        return
    if not args.source or not args.speaker:
        raise UserError("give --source and --speaker (or --evaluate)")
    convert.convert(settings, args.source, args.speaker, args.out, seconds=args.seconds)


if __name__ == "__main__":
    run_job(main, __doc__, add_arguments=add_arguments)
