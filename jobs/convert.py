"""Voice conversion: a speech utterance's codes decoded with another speaker's id.

    python jobs/convert.py --config configs/demo-speech.yaml --source p901_012 --speaker p905
    python jobs/convert.py --config configs/demo-speech.yaml --source my.wav --speaker p905 --seconds 2
    python jobs/convert.py --config configs/demo-speech.yaml --source recordings/ a.flac p901_012 --speaker p905
    python jobs/convert.py --config configs/demo-speech.yaml --source val --speaker p905   # every val utterance
    python jobs/convert.py --config configs/demo-speech.yaml --evaluate   # the scores, on the model's run

--source: one or more of: a val utterance's key, an audio file (WAV, FLAC, OGG; resampled to
data.sample_rate), a folder (its audio files), `val` (every val utterance). One job converts them
all: the model loads once and decodes them in batches, one WAV and one picture each.
--speaker: a speaker of the dataset, by name (p225) or id. --seconds: only the source's first
seconds (the WaveNet decoder generates sample by sample: a few seconds of speech take a while on
a CPU; the WORLD decoder takes a fraction of real time).
The model: codes.model, else the VQ-VAE champion. Writes
<workdir>/conversions/<source>-to-<speaker>.{wav,png}.
"""
import _repo  # noqa: F401  the repository on the import path, jobs/ off it

from pipeline.cli import run_job
from pipeline.stages.convert import run


def add_arguments(parser) -> None:
    parser.add_argument("--source", nargs="+", help="val utterance keys, audio files, folders of them, or 'val'")
    parser.add_argument("--speaker", help="the target speaker: name or id")
    parser.add_argument("--seconds", type=float, help="convert only the source's first seconds (default: all)")
    parser.add_argument("--out", help="folder for the results (default <workdir>/conversions)")
    parser.add_argument("--evaluate", action="store_true",
                        help="score conversions of val utterances and log them on the model's MLflow run")


if __name__ == "__main__":
    run_job(lambda settings, args: run(settings, args.source, args.speaker, args.out, args.seconds, args.evaluate),
            __doc__, add_arguments=add_arguments)
