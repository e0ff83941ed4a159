"""Bad input, one case at a time, and the message each gets: the table in results/bad-inputs.md.

    python scripts/bad_inputs.py --out results/bad-inputs.md     # every case (about a minute)
    python scripts/bad_inputs.py --cases flag ptb-utf8            # some

Each case builds its bad input in a temporary folder, runs `bench` on it in a child process and
records the exit status and what it printed as an error. A case passes when the command fails
(exit status not 0), prints exactly one error line, that line names the bad file (or flag, or key),
and the files the case marks as already written (a results file, a checkpoint) are byte for byte
as they were.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import shlex
import struct
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Case:
    name: str
    what: str
    make: Callable[[Path], tuple[list[str], str, list[Path]]]  # folder -> (bench argv, what the line names, kept files)


def _ptb(root: Path, train: bytes | None = None) -> Path:
    folder = root / "ptb"
    folder.mkdir(parents=True, exist_ok=True)
    words = "the market rose today and the company said its shares fell".split()
    text = "".join(" " + " ".join(words[(i + j) % len(words)] for j in range(8)) + " \n" for i in range(60))
    for split in ("train", "valid", "test"):
        (folder / f"ptb.{split}.txt").write_bytes(train if split == "train" and train is not None else text.encode())
    return root


TINY = ["--set", "model.hidden_size=8", "--set", "trainer.max_epochs=1", "--set", "data.batch_size=4",
        "--set", "data.bptt=5", "--logger", "csv"]


def _run(d: Path, *extra: str) -> list[str]:
    return ["run", "--data-root", str(d / "data"), "--runs-dir", str(d / "runs"), "--results-dir",
            str(d / "results"), *extra]


def flag(d: Path):
    return ["run", "--task", "ptb", "--sedes", "3"], "--sedes", []


def task(d: Path):
    return _run(d, "--task", "ptbx"), "ptbx", []


def preset_key(d: Path):
    _ptb(d / "data")
    return _run(d, "--task", "ptb", "--preset", "small", "--set", "model.hiden_size=8"), "hiden_size", []


def ptb_missing(d: Path):
    (_ptb(d / "data") / "ptb" / "ptb.test.txt").unlink()
    return _run(d, "--task", "ptb", "--preset", "small", "--set", "data.download=false", *TINY), "ptb.test.txt", []


def ptb_utf8(d: Path):
    _ptb(d / "data", train=" the caf\xe9 rose \n".encode("latin-1"))
    return _run(d, "--task", "ptb", "--preset", "small", *TINY), "ptb.train.txt", []


def _translation(d: Path, lines: list[str], *extra: str) -> list[str]:
    """translation/tatoeba-quick trained on `lines` as its Tatoeba file, data/pairs.txt."""
    (d / "data" / "pairs.txt").write_text("\n".join(lines) + "\n")
    return _run(d, "--task", "translation", "--preset", "tatoeba-quick", "--set", "data.train={tab: pairs.txt}",
                "--set", "data.train_pairs=null", *extra, *TINY[:4])


def tatoeba_tab(d: Path):
    (d / "data").mkdir(parents=True)
    lines = [f"Sentence {i}.\tPhrase {i}." for i in range(50)]
    lines[20] = "a line without its tab"
    return _translation(d, lines), "pairs.txt:21", []


def captions_json(d: Path):
    (d / "data" / "flickr8k" / "images").mkdir(parents=True)
    (d / "data" / "flickr8k" / "captions.json").write_text('{"images": [{"id": 1, "file_name": "a.jpg"}], ')
    return _run(d, "--task", "captioning", "--preset", "quick", *TINY[:4]), "captions.json", []


def speech_audio(d: Path):
    for part, spk in (("an4_clstk", "fabc"), ("an4_clstk", "mdef"), ("an4test_clstk", "mtst")):
        folder = d / "data" / "an4" / "wav" / part / spk
        folder.mkdir(parents=True)
        for i in range(2):
            with wave.open(str(folder / f"u{i}.wav"), "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
                w.writeframes(b"".join(struct.pack("<h", int(9000 * math.sin(t / 8))) for t in range(16000)))
            (folder / f"u{i}.phn").write_text("0 8000 SIL\n8000 16000 AA\n")
    bad = d / "data" / "an4" / "wav" / "an4_clstk" / "fabc" / "u1.wav"
    bad.write_bytes(bad.read_bytes()[:30])  # cut inside the header
    return _run(d, "--task", "speech", "--preset", "an4-quick", "--set", "data.valid_speakers=[mdef]",
                "--set", f"data.cache_dir={d / 'cache'}", *TINY[:4]), "u1.wav", []


def checkpoint(d: Path):
    _ptb(d / "data")
    argv = _run(d, "--task", "ptb", "--preset", "small", *TINY)
    subprocess.run([sys.executable, "-m", "benchmark.cli", *argv, "--max-epochs", "1"], cwd=ROOT, capture_output=True)
    (d / "results").rename(d / "results-done")  # the run folder stays: --resume goes to it
    run_dir = next((d / "runs").iterdir())
    (run_dir / "result.json").unlink()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    return [*argv, "--resume"], "last.ckpt", [ckpt]


def runs_csv(d: Path):
    _ptb(d / "data")
    (d / "results").mkdir()
    rows = d / "results" / "runs.csv"
    rows.write_text("task,preset,seed\nptb,small,0\nptb,small\nptb,small,2\n")
    return _run(d, "--task", "ptb", "--preset", "small", *TINY), "runs.csv", [rows]


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def shared_checkpoint(d: Path):
    import torch

    folder = d / "shared-run"
    (folder / "checkpoints").mkdir(parents=True)
    with open(folder / "checkpoints" / "last.ckpt", "wb") as f:
        torch.save({"state_dict": {}, "loops": {}, "epoch": 1, "x": _Touch(d / "code-ran")}, f, pickle_protocol=2)
    (folder / "result.json").write_text('{"row": {"task": "ptb", "preset": "small"}, "data": {}}')
    return ["ensemble", "--task", "ptb", "--runs", str(folder), str(folder), "--data-root", str(_ptb(d / "data")),
            "--results-dir", str(d / "results")], "last.ckpt", []


def too_many_bad_lines(d: Path):
    (d / "data").mkdir(parents=True)
    lines = [f"Sentence {i}.\tPhrase {i}." if i % 10 else "no tab" for i in range(200)]
    return _translation(d, lines, "--set", "data.bad_records={skip_above: 100, max_fraction: 0.01}"), "pairs.txt", []


CASES = [
    Case("flag", "a misspelt flag", flag),
    Case("task", "an unknown task", task),
    Case("preset-key", "a `--set` key the model does not take", preset_key),
    Case("ptb-missing", "a PTB split missing, downloads off", ptb_missing),
    Case("ptb-utf8", "a PTB file that is not UTF-8", ptb_utf8),
    Case("tatoeba-tab", "a Tatoeba line without its tab (a small corpus: strict)", tatoeba_tab),
    Case("captions-json", "a captions JSON cut short", captions_json),
    Case("speech-audio", "a truncated WAV among AN4's utterances", speech_audio),
    Case("checkpoint", "a last.ckpt cut short, then --resume", checkpoint),
    Case("runs-csv", "a damaged line in the middle of runs.csv", runs_csv),
    Case("shared-checkpoint", "a shared checkpoint whose pickle would run code (`bench ensemble`)", shared_checkpoint),
    Case("too-many-bad-lines", "10% of a large corpus's lines bad, over its max_fraction", too_many_bad_lines),
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def check(case: Case, work: Path) -> dict[str, str]:
    d = work / case.name
    d.mkdir(parents=True)
    argv, names, kept = case.make(d)
    before = {p: _digest(p) for p in kept}
    env = {**os.environ, "WANDB_MODE": "disabled", "RNNREG_CACHE_DIR": str(d / "cache")}
    out = subprocess.run([sys.executable, "-m", "benchmark.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=600)
    errors = [line for line in out.stderr.splitlines() if line.startswith(("bench: error:", "bench run: error:"))]
    argparse_error = [line for line in out.stderr.splitlines() if line.startswith("bench") and ": error:" in line]
    errors = errors or argparse_error
    message = errors[0] if errors else (out.stderr.strip().splitlines() or ["(nothing)"])[-1]
    intact = all(_digest(p) == h for p, h in before.items())
    ran_code = (d / "code-ran").exists()
    ok = out.returncode != 0 and len(errors) == 1 and names in message and intact and not ran_code
    return {"case": case.name, "input": case.what, "exit": str(out.returncode), "error_lines": str(len(errors)),
            "message": message.replace(str(d), "…").replace(f"{ROOT}/", "").replace("|", "\\|"), "names": names,
            "kept": "n/a" if not kept else ("intact" if intact else "CHANGED"), "verdict": "ok" if ok else "FAILED"}


def markdown(results: list[dict[str, str]], command: str) -> str:
    lines = ["# Bad input and the message it gets", "", "<!-- generated by scripts/bad_inputs.py; do not edit -->",
             f"`{command}`. Each case runs `bench` on one bad input in a fresh folder (`…` below). *ok*: the command "
             "fails, prints exactly one error line, that line names the file, flag or key, and files written "
             "before (a results file, a checkpoint) are byte for byte as they were.", "",
             "| case | bad input | exit | error lines | message | names | written files | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['input']} | {r['exit']} | {r['error_lines']} | {r['message']} | `{r['names']}` | "
              f"{r['kept']} | **{r['verdict']}** |" for r in results]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", choices=[c.name for c in CASES], default=[c.name for c in CASES])
    p.add_argument("--out", type=Path, help="write the table here (Markdown)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rnnreg-bad-inputs-") as tmp:
        results = [check(c, Path(tmp)) for c in CASES if c.name in args.cases]
    text = markdown(results, shlex.join(["python", "scripts/bad_inputs.py", *argv]))
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if all(r["verdict"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
