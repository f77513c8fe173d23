"""Speech corpora on disk: VCTK 0.80 and 0.92 and plain speaker folders, the speaker table of
`speaker-info.txt`, and the listing of a root in any of them (`data.layout: auto` finds which).

- VCTK 0.80: `wav48/pXXX/pXXX_NNN.wav`, `txt/pXXX/pXXX_NNN.txt`
- VCTK 0.92: `wav48_silence_trimmed/pXXX/pXXX_NNN_mic1.flac` (`mic2` by `data.mic`), `txt/...`
- folders: `<root>/<speaker>/*.{wav,flac,ogg}`, with `<stem>.txt` beside a file as its transcript
"""
from __future__ import annotations

import random
import re

from pipeline import fs as fsx
from pipeline.errors import UserError
from pipeline.modalities import RawItem
from pipeline.modalities.common import hold_out, sample_key, stem
from pipeline.modalities.folders import list_dir
from pipeline.modalities.speech.settings import SpeechData

# The conditioning's name in batches, codes and the models: pipeline.models.speech.SPEAKER, spelt
# here too so that sharding (Ray Data's workers) imports no torch; a test checks they agree.
SPEAKER = "speaker"
EXTENSIONS = (".wav", ".flac", ".ogg")
INFO = "speaker-info.txt"


def _detect(fs, base: str, layout: str) -> str:
    if layout != "auto":
        return layout
    if fsx.isdir(fs, f"{base}/wav48_silence_trimmed"):
        return "vctk-0.92"
    if fsx.isdir(fs, f"{base}/wav48"):
        return "vctk-0.80"
    return "folders"


def read_speaker_info(text: str) -> dict[str, dict[str, str]]:
    """VCTK's speaker-info.txt (either release) -> {speaker id as its folder is named: {column: value}}.
    The last column (REGION, or COMMENTS) keeps the rest of the line, spaces included."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return {}
    header = lines[0].replace(";", " ").split()
    table = {}
    for line in lines[1:]:
        parts = line.split(None, len(header) - 1)
        if not parts:
            continue
        row = {h.lower(): (parts[i].strip() if i < len(parts) else "") for i, h in enumerate(header)}
        speaker = row.pop(header[0].lower())
        table[speaker if speaker.startswith(("p", "s")) or not speaker.isdigit() else f"p{speaker}"] = row
    return table


def _utterance_key(speaker: str, name: str, layout: str, mic: str) -> str | None:
    """The sample key of an utterance file (`name`: its name without extension); None for VCTK
    0.92's other microphone."""
    if layout == "vctk-0.92":
        if re.search(r"_mic[12]$", name) and not name.endswith(f"_{mic}"):
            return None
        name = name.removesuffix(f"_{mic}")
    return sample_key(name if layout != "folders" or name.startswith(speaker) else f"{speaker}_{name}")


def list_speech(data: SpeechData) -> tuple[list[str], dict[str, list[RawItem]], list[dict], dict]:
    """-> (speakers, splits, skipped, manifest fields) for data.root in any supported layout."""
    fs, base = fsx.filesystem(data.root)
    if not fsx.isdir(fs, base):
        raise UserError(f"data.root does not exist or is not a folder: {data.root}")
    layout = _detect(fs, base, data.layout)
    audio_dir = {"vctk-0.92": f"{base}/wav48_silence_trimmed", "vctk-0.80": f"{base}/wav48", "folders": base}[layout]
    if not fsx.isdir(fs, audio_dir):
        raise UserError(f"data.root has no {audio_dir.rsplit('/', 1)[-1]}/ folder (data.layout: {layout}): {data.root}")
    is_audio = (lambda n: n.lower().endswith(".flac")) if layout == "vctk-0.92" else \
        (lambda n: n.lower().endswith(EXTENSIONS))
    loose, speaker_dirs, skipped = list_dir(fs, audio_dir, is_audio)
    skipped += [{"path": p, "reason": "not in a speaker folder"} for p in loose]
    info = {}
    if fsx.exists(fs, f"{base}/{INFO}"):
        info = read_speaker_info(fsx.read_bytes(fs, f"{base}/{INFO}").decode("utf-8", errors="replace"))
    per_speaker: dict[str, list[RawItem]] = {}
    for folder in speaker_dirs:
        speaker = folder.rsplit("/", 1)[-1]
        files, _, folder_skipped = list_dir(fs, folder, is_audio)
        skipped += folder_skipped
        items = []
        for path in files:
            key = _utterance_key(speaker, stem(path), layout, data.mic)
            if key is None:  # the other microphone
                continue
            text_path = (f"{base}/txt/{speaker}/{key}.txt" if layout != "folders"
                         else path.rsplit(".", 1)[0] + ".txt")
            text = ""
            if fsx.exists(fs, text_path):
                text = fsx.read_bytes(fs, text_path).decode("utf-8", errors="replace").strip()
            items.append(RawItem(key=key, path=path, cond={}, meta={"speaker": speaker, "text": text}))
        if items:
            per_speaker[speaker] = items
    if not per_speaker:
        raise UserError(f"data.root holds no audio files in the {layout} layout: {data.root}")
    unknown = sorted(set(data.val_speakers) - set(per_speaker))
    if unknown:
        raise UserError(f"data.val_speakers names speakers data.root does not hold: {', '.join(unknown)}")
    speakers = sorted(per_speaker)
    index = {s: i for i, s in enumerate(speakers)}
    rng = random.Random(data.seed)
    splits: dict[str, list[RawItem]] = {"train": [], "val": []}
    for speaker in speakers:
        items = [RawItem(it.key, it.path, {SPEAKER: index[speaker]}, it.skip, it.meta) for it in per_speaker[speaker]]
        if speaker in data.val_speakers:
            splits["val"] += items
            continue
        # every speaker on both sides: voice conversion is scored on val utterances of train speakers
        val, train = hold_out(items, data.val_fraction, rng, at_least_one=True)
        splits["val"] += val
        splits["train"] += train
    table = [{"id": s, **info.get(s, {}), "held_out": s in data.val_speakers} for s in speakers]
    manifest = {"layout": layout, "sample_rate": data.sample_rate, "speakers": table}
    return speakers, splits, skipped, manifest
