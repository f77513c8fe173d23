"""A small action-conditioned video data set made offline: first-person clips rendered headless
with ViZDoom in the 32 Freedoom 2 maps it ships (monsters off), each with the actions that drove it.

    <root>/train/doom_NNNN.mp4, <root>/val/doom_NNNN.mp4    H.264, yuv420p (MPEG-4 part 2 without x264)
    <root>/<split>/doom_NNNN.actions.json = {"actions": [a_0, ..., a_{T-1}]}   one int per frame
    <root>/actions.json = {"names": ["forward", "backward", "turn_left", "turn_right"]}

Convention: actions[i] is the action taken after frame i is shown, so it drives frame i+1 (the
gym/ViZDoom step convention); the last action drives nothing in the clip. An action lasts `TICS`
game tics (35 a second); a turn shifts the 64-pixel view by about 10 pixels (about half that on the
first frame of a turn: Doom eases turns in), a step forward or back moves about 30 map units (with
Doom's momentum). The policy is seeded and random: an action persists for 3-8 frames, forward is
drawn twice as often as each other action. Each clip is a new episode that starts after a random
walk of its own length, so clips start in different places; val clips come from 4 maps, train clips
from the other 28. A clip whose view barely changes (stuck against a wall) is made again. Frames are
the centre square of the 160x120 screen, resized. The same seed gives the same actions (which
episode is kept is judged on the game's state); pixels may differ slightly between runs and
machines (a few animated textures).

The engine writes `./_vizdoom/` and `./_vizdoom.ini` into its working directory, so the clips are
rendered by worker processes started in a scratch folder.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.fs import building
from pipeline.media import write_mp4

NAMES = ["forward", "backward", "turn_left", "turn_right"]
BUTTONS = ["MOVE_FORWARD", "MOVE_BACKWARD", "TURN_LEFT", "TURN_RIGHT"]  # the engine button per action
WEIGHTS = [0.4, 0.2, 0.2, 0.2]  # forward more often, so the walk gets somewhere
HOLD = (3, 8)  # frames an action persists
TICS = 4  # game tics per action: a turn is about 14 degrees, a step about 30 map units
WARMUP = (10, 80)  # actions of the random walk before a clip is recorded
VAL_MAPS = ["MAP04", "MAP12", "MAP20", "MAP26"]  # Freedoom 2 has MAP01-MAP32
TRAIN_MAPS = [f"MAP{m:02d}" for m in range(1, 33) if f"MAP{m:02d}" not in VAL_MAPS]
MIN_MOVING = 0.5  # a clip is made again when the player moves in fewer of its frame-to-frame steps
MOVED = (1.0, 0.5)  # map units, degrees: a step moves the player when position or view angle change more
ATTEMPTS = 6  # tries per clip; without a good one, the one that moved most is kept
CHAINS = 8  # clips are rendered in this many fixed sequences, each by a fresh engine
CRF = 12  # x264 quality: near lossless at this size


def _check_packages() -> None:
    from pipeline.modalities import require

    require("video", "vizdoom", "av")


def _complete(root: Path) -> bool:
    return (root / "actions.json").is_file() and (root / "train").is_dir() and (root / "val").is_dir()


def make_demo_data(root: str | Path, seed: int = 0, train_clips: int = 216, val_clips: int = 24,
                   frames: int = 32, size: int = 64, fps: float = 15.0, workers: int = 2) -> dict:
    """Write the clips at `root` (built in a temporary folder beside it and renamed: a folder that
    exists is complete); returns counts."""
    root = Path(root)
    if _complete(root):
        return {"out": str(root), "created": False}
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserError(f"{root} exists but is not a finished video demo data set: remove it or pick another root")
    if frames < 2 or size < 8 or size % 2 or train_clips < 1 or val_clips < 1:
        raise UserError("the video demo data needs frames >= 2, an even size >= 8 (yuv420p) and at least one "
                        "train and one val clip")
    _check_packages()
    jobs = [{"index": i, "split": "train", "map": TRAIN_MAPS[i % len(TRAIN_MAPS)]} for i in range(train_clips)]
    jobs += [{"index": train_clips + i, "split": "val", "map": VAL_MAPS[i % len(VAL_MAPS)]} for i in range(val_clips)]
    start = time.monotonic()
    with building(root) as tmp:  # an empty root is taken over (checked above)
        for split in ("train", "val"):
            (tmp / split).mkdir(parents=True)
        params = {"seed": seed, "frames": frames, "size": size, "fps": fps, "out": str(tmp.resolve())}
        results = _run_workers(jobs, params, max(1, workers))
        (tmp / "actions.json").write_text(json.dumps({"names": NAMES}) + "\n")
    return {"out": str(root), "created": True, "train": train_clips, "val": val_clips, "frames": frames,
            "size": size, "actions": len(NAMES), "codec": results[0]["codec"],
            "remade": sum(r["attempts"] - 1 for r in results), "seconds": round(time.monotonic() - start, 1)}


def _run_workers(jobs: list[dict], params: dict, workers: int) -> list[dict]:
    """Render `jobs` in `workers` processes, each in its own scratch folder. The jobs form CHAINS
    fixed chains, each rendered by a freshly started engine: a few pixels depend on the episodes an
    engine ran before, and this way those do not depend on `workers`."""
    chains = [chain for chain in (jobs[c::CHAINS] for c in range(CHAINS)) if chain]
    shares = [share for share in (chains[k::workers] for k in range(workers)) if share]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    # Load this file by path: a worker needs this module alone, not the video modality's package.
    code = ("import importlib.util, json\n"
            f"spec = importlib.util.spec_from_file_location('video_demo_worker', {str(Path(__file__).resolve())!r})\n"
            "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
            "module._worker(json.load(open('spec.json')))")
    with tempfile.TemporaryDirectory(prefix="vizdoom-") as scratch:
        procs = []
        try:
            for k, share in enumerate(shares):
                cwd = Path(scratch) / f"w{k}"
                cwd.mkdir()
                (cwd / "spec.json").write_text(json.dumps({**params, "jobs": share, "result": str(cwd / "result.json")}))
                with open(cwd / "log.txt", "wb") as log:
                    procs.append((subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=env,
                                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT), cwd))
            results = []
            for proc, cwd in procs:
                proc.wait()
                result = cwd / "result.json"
                if proc.returncode != 0 or not result.is_file():
                    tail = (cwd / "log.txt").read_text(errors="replace").strip().splitlines()[-15:]
                    raise RuntimeError(f"video demo worker failed (exit {proc.returncode}):\n" + "\n".join(tail))
                results += json.loads(result.read_text())
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return results


# ------------------------------------------------------------------ worker side (its own process)

def _worker(spec: dict) -> None:
    import vizdoom as vzd

    results = []
    for chain in spec["jobs"]:
        game = _game(vzd)
        try:
            results += [_clip(game, job, spec) for job in chain]
        finally:
            game.close()
    Path(spec["result"]).write_text(json.dumps(results))


def _game(vzd):
    game = vzd.DoomGame()
    game.set_doom_game_path(os.path.join(os.path.dirname(vzd.__file__), "freedoom2.wad"))
    config = os.path.abspath("_vizdoom.ini")  # the engine saves its settings here on exit: start afresh
    if os.path.exists(config):
        os.remove(config)
    game.set_doom_config_path(config)
    game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
    game.set_screen_format(vzd.ScreenFormat.RGB24)
    game.set_window_visible(False)
    game.set_sound_enabled(False)
    game.set_render_hud(False)
    game.set_render_weapon(False)
    game.set_render_crosshair(False)
    game.set_render_messages(False)
    game.set_available_buttons([getattr(vzd.Button, b) for b in BUTTONS])
    game.set_available_game_variables([vzd.GameVariable.POSITION_X, vzd.GameVariable.POSITION_Y,
                                       vzd.GameVariable.ANGLE])
    game.set_episode_timeout(0)
    game.set_mode(vzd.Mode.PLAYER)
    game.add_game_args("-nomonsters")
    try:
        game.init()
    except Exception as e:  # noqa: BLE001  (vizdoom raises its own exception types)
        raise RuntimeError(f"ViZDoom did not start: {e}") from e
    return game


def _policy(rng: random.Random):
    """Seeded random actions, each held for HOLD frames."""
    while True:
        action = rng.choices(range(len(NAMES)), weights=WEIGHTS)[0]
        for _ in range(rng.randint(*HOLD)):
            yield action


def _clip(game, job: dict, spec: dict) -> dict:
    """One clip: up to ATTEMPTS episodes (each with its own seed) until one where the player moves
    enough; without one, the one that moved most."""
    best = None  # (moving, attempt, clip, actions)
    for attempt in range(ATTEMPTS):
        rng = random.Random(spec["seed"] * 1_000_003 + job["index"] * 101 + attempt)
        recorded = _episode(game, job["map"], rng, spec["frames"], spec["size"])
        if recorded is None:
            continue  # walked onto an exit line or died in slime
        clip, actions, poses = recorded
        step = np.abs(np.diff(poses, axis=0))
        turned = np.minimum(step[:, 2], 360 - step[:, 2])
        moving = float(((np.hypot(step[:, 0], step[:, 1]) > MOVED[0]) | (turned > MOVED[1])).mean())
        if best is None or moving > best[0]:
            best = (moving, attempt, clip, actions)
        if moving >= MIN_MOVING:
            break
    if best is None:
        raise RuntimeError(f"no usable episode for clip {job['index']} in {job['map']}")
    moving, attempt, clip, actions = best
    stem = Path(spec["out"]) / job["split"] / f"doom_{job['index']:04d}"
    write_mp4(list(clip), f"{stem}.mp4", spec["fps"], crf=CRF, fast=True)  # workers run side by side
    decoded, codec = _probe(f"{stem}.mp4")
    if decoded != len(clip):
        raise RuntimeError(f"{stem}.mp4 decodes to {decoded} frames, not {len(clip)}")
    Path(f"{stem}.actions.json").write_text(json.dumps({"actions": actions}) + "\n")
    return {"index": job["index"], "attempts": attempt + 1, "moving": moving, "codec": codec}


def _episode(game, map_name: str, rng: random.Random, frames: int, size: int):
    """A new episode on `map_name`, a random walk of random length, then `frames` frames, their
    actions (actions[i] is made after frame i; the last is not made) and the player's (x, y, angle)
    at each frame; None if the episode ended."""
    policy = _policy(rng)
    buttons = np.eye(len(NAMES)).tolist()
    game.set_seed(rng.randrange(2**31))
    game.set_doom_map(map_name)
    game.new_episode()
    for _ in range(rng.randint(*WARMUP)):
        if game.is_episode_finished():
            return None
        game.make_action(buttons[next(policy)], TICS)
    actions = [next(policy) for _ in range(frames)]
    pictures, poses = [], []
    for i in range(frames):
        if game.is_episode_finished() or game.is_player_dead():
            return None
        state = game.get_state()
        pictures.append(_square(state.screen_buffer, size))
        poses.append(state.game_variables)
        if i < frames - 1:
            game.make_action(buttons[actions[i]], TICS)
    return np.stack(pictures), actions, np.array(poses, dtype=np.float64)


def _square(screen: np.ndarray, size: int) -> np.ndarray:
    """The centre square of a (H, W, 3) screen, resized to size x size."""
    from PIL import Image

    h, w = screen.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = Image.fromarray(np.ascontiguousarray(screen[top:top + side, left:left + side]))
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS))


def _probe(path: str) -> tuple[int, str]:
    """(frames that decode, the codec's name) of an MP4."""
    import av

    with av.open(path) as container:
        return sum(1 for _ in container.decode(video=0)), container.streams.video[0].codec_context.name
