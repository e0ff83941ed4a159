"""Forward+backward time of the speech preset's LSTM on one padded batch vs the same batch packed.

Why tasks/frame_classifier.py feeds padded batches: a unidirectional LSTM's real frames never see
trailing padding, so both give the same outputs there, and on CPU packing is far slower.

    python scripts/bench_packed_vs_padded.py
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn.utils.rnn import pack_padded_sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tasks.nn.backbone import DropoutLSTM  # noqa: E402


def best_of(fn, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.manual_seed(0)
    T, B, F, H = 400, 16, 120, 192  # ~4 s utterances, the an4-quick batch and model
    x = torch.randn(T, B, F)
    lengths = torch.randint(200, T + 1, (B,))
    lengths[0] = T
    for impl in ("fused", "stacked"):
        lstm = DropoutLSTM(F, H, 2, 0.5, impl=impl)
        padded = best_of(lambda: lstm(x)[0].sum().backward())
        packed = best_of(lambda: lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))[0].data.sum().backward())
        print(f"{impl}: padded {padded * 1000:.0f} ms, packed {packed * 1000:.0f} ms, packed/padded {packed / padded:.1f}x "
              f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
