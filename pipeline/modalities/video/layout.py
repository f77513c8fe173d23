"""Clips on disk: `<root>/{train,val}/[<class>/]<clip>.{mp4,webm,mkv,avi,gif,mov}`, each with
`<clip>.actions.json` beside it when the data set has actions, and `<root>/actions.json`, the
action vocabulary. Without `val/`, a seeded `val_fraction` of the clips (per class) is held out."""
from __future__ import annotations

import json
import random

from pipeline import fs as fsx
from pipeline.errors import UserError
from pipeline.formats import CondSpec
from pipeline.modalities import Listing, RawItem
from pipeline.modalities.common import hold_out, sample_key, stem
from pipeline.modalities.folders import list_dir
from pipeline.modalities.video.settings import VideoData

EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".gif", ".mov")
ACTIONS = "actions"  # the per-frame conditioning's name: batches, codes, the prior
CLASSES = "labels"  # the class id's name, as for images
ACTIONS_FILE = "actions.json"


def _read_json(fs, path: str, what: str):
    try:
        return json.loads(fsx.read_bytes(fs, path))
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} {path} is not readable JSON: {e}") from None


def _vocabulary(fs, base: str, root: str) -> list[str] | None:
    path = f"{base}/{ACTIONS_FILE}"
    if not fsx.exists(fs, path):
        return None
    try:
        names = _read_json(fs, path, "the action vocabulary")["names"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{root}/{ACTIONS_FILE}: expected {{\"names\": [...]}} ({e})") from None
    if not isinstance(names, list) or not names:
        raise UserError(f"{root}/{ACTIONS_FILE}: \"names\" must be a non-empty list")
    return [str(n) for n in names]


def _clip_actions(fs, path: str) -> tuple[list[int] | None, str | None]:
    """A clip's actions file -> (actions, None), (None, None) when there is none, or (None, reason)."""
    act = f"{path.rsplit('.', 1)[0]}.actions.json"
    if not fsx.exists(fs, act):
        return None, None
    try:
        actions = _read_json(fs, act, "actions file")["actions"]
        if not isinstance(actions, list) or not all(isinstance(a, int) and not isinstance(a, bool) for a in actions):
            raise ValueError("\"actions\" must be a list of integers")
    except (ValueError, KeyError, TypeError) as e:
        return None, f"bad actions file {act.rsplit('/', 1)[-1]}: {e}"
    return actions, None


def _is_clip(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


def _key(class_name: str | None, path: str) -> str:
    return sample_key(f"{class_name}-{stem(path)}" if class_name else stem(path))


def list_clips(data: VideoData) -> Listing:
    """The clips of `data.root` (a local folder or a pyarrow filesystem URI: s3://, gs://)."""
    root = data.root
    fs, base = fsx.filesystem(root)
    if not fsx.isdir(fs, f"{base}/train"):
        raise UserError(f"data.root has no train/ folder of clips: {root}")
    found: dict[str, list[tuple[str | None, str]]] = {}
    skipped: list[dict] = []
    for split in ("train", "val"):
        files, dirs, odd = list_dir(fs, f"{base}/{split}", _is_clip)
        skipped += odd
        found[split] = [(None, p) for p in files]
        for d in dirs:
            in_class, _, odd = list_dir(fs, d, _is_clip)
            skipped += odd
            found[split] += [(d.rstrip("/").rsplit("/", 1)[-1], p) for p in in_class]
    classes = sorted({c for c, _ in found["train"] if c})
    if classes and any(c is None for c, _ in found["train"]):
        raise UserError(f"{root}/train holds both clips and class folders: use one or the other")
    names = _vocabulary(fs, base, root)
    actions = {p: _clip_actions(fs, p) for s in found.values() for _, p in s}
    have_actions = names is not None or any(a is not None for a, _ in actions.values())
    if names is None and have_actions:
        top = max((max(a) for a, _ in actions.values() if a), default=0)
        names = [str(i) for i in range(top + 1)]
    index = {c: i for i, c in enumerate(classes)}

    def item(class_name: str | None, path: str) -> RawItem:
        cond, skip = {}, None
        if classes:
            cond[CLASSES] = index.get(class_name, -1)
            if cond[CLASSES] < 0:
                skip = f"class folder {class_name!r} is not a train class"
        if have_actions:
            acts, bad = actions[path]
            if bad:
                skip = bad
            elif acts is None:
                skip = "no actions file beside the clip (other clips have one)"
            elif any(not 0 <= a < len(names) for a in acts):
                wrong = next(a for a in acts if not 0 <= a < len(names))
                skip = f"action {wrong} outside the vocabulary (0 .. {len(names) - 1})"
            cond[ACTIONS] = acts or []
        return RawItem(key=_key(class_name, path), path=path, cond=cond, skip=skip)

    splits = {"train": [], "val": []}
    if found["val"]:
        for split in splits:
            splits[split] = [item(c, p) for c, p in found[split]]
    else:  # a seeded fraction of every class's clips
        rng = random.Random(data.seed)
        for c in (classes or [None]):
            val, train = hold_out([p for cc, p in found["train"] if cc == c], data.val_fraction, rng)
            splits["val"] += [item(c, p) for p in val]
            splits["train"] += [item(c, p) for p in train]
    if not splits["train"]:
        raise UserError(f"data.root holds no clips ({', '.join(EXTENSIONS)}) under train/: {root}")
    cond = {}
    if classes:
        cond[CLASSES] = CondSpec("class", len(classes), tuple(classes))
    if have_actions:
        cond[ACTIONS] = CondSpec("sequence", len(names), tuple(names))
    manifest = {"classes": classes, "action_names": names or [], "frame_size": data.frame_size,
                "frames": data.frames, "window_stride": data.stride, "fps": data.fps}
    return Listing(splits, cond, manifest, sorted(skipped, key=lambda s: s["path"]))
