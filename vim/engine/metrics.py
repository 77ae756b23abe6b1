"""Accuracy, the metrics log (JSONL) and progress reporting (tqdm bar on a TTY, log lines otherwise)."""
import json
import logging
import os
import sys
import time
from typing import Dict, List, Optional

import torch

__all__ = ['topk_correct', 'MetricsLog', 'Progress', 'format_duration', 'setup_logging', 'close_logging']

logger = logging.getLogger('vim.train')


@torch.no_grad()
def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> List[torch.Tensor]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at #classes)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(targets.view(-1, 1))
    return [hit[:, :min(k, maxk)].any(dim=1).sum() for k in ks]


class MetricsLog:
    """Append-only JSONL of dict rows; rank 0 writes, other ranks hold nothing."""

    def __init__(self, path: Optional[str]):
        self.path = path

    def write(self, row: Dict) -> None:
        if self.path is None:
            return
        with open(self.path, 'a') as f:
            f.write(json.dumps(row, sort_keys=False) + '\n')
            f.flush()

    def rows(self) -> List[Dict]:
        if self.path is None or not os.path.exists(self.path):
            return []
        out = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:  # a line cut short by a kill
                        break
        return out

    def truncate_after(self, step: int) -> None:
        """Drop rows written after ``step``: a resumed run rewrites them."""
        if self.path is None:
            return
        keep = [r for r in self.rows() if r.get('step', 0) <= step]
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
            for r in keep:
                f.write(json.dumps(r) + '\n')
        os.replace(tmp, self.path)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h:d}:{m:02d}:{s:02d}'


class Progress:
    """One epoch's progress: a tqdm bar with loss, lr and img/s on a TTY, else a line every ``every`` steps."""

    def __init__(self, total: int, epoch: int, epochs: int, mode: str = 'auto', every: int = 50,
                 enabled: bool = True):
        self.total, self.epoch, self.epochs, self.every = total, epoch, epochs, every
        use_bar = mode == 'bar' or (mode == 'auto' and sys.stderr.isatty())
        self.bar = None
        if enabled and use_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=f'epoch {epoch + 1}/{epochs}', unit='step', dynamic_ncols=True,
                            leave=True)
        self.enabled = enabled
        self.start = time.perf_counter()
        self.images = 0
        self.done = 0

    def update(self, step_in_epoch: int, images: int, loss: float, lr: float) -> None:
        self.images += images
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f'{loss:.4f}', lr=f'{lr:.2e}', img_s=f'{rate:.0f}', refresh=False)
        elif step_in_epoch % self.every == 0 or step_in_epoch == self.total:
            eta = elapsed / self.done * (self.total - step_in_epoch)
            logger.info(f'epoch {self.epoch + 1}/{self.epochs} step {step_in_epoch}/{self.total} '
                        f'loss {loss:.4f} lr {lr:.3e} {rate:.1f} img/s eta {format_duration(eta)}')

    def throughput(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.images / elapsed if elapsed > 0 else 0.0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_OWN = '_vim_run_handler'     # marks the handlers setup_logging adds, so it replaces only its own


class _TerminalOnly(logging.Filter):
    """Keeps records logged with ``extra={'log_file_only': True}`` (a failure's traceback) off the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, 'log_file_only', False)


def setup_logging(run_dir: Optional[str], is_main: bool) -> None:
    """Route the ``vim.train`` logger to stdout and, with ``run_dir`` on the main process, to ``run_dir/train.log``.

    Idempotent: a second call replaces the handlers the first added (never a user's or a test harness's), so no
    record is written twice however often a process trains. :func:`close_logging` undoes it."""
    close_logging()
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    fmt = logging.Formatter('%(asctime)s %(levelname)s %(message)s', '%H:%M:%S')
    stream = logging.StreamHandler(sys.stdout)
    stream.addFilter(_TerminalOnly())
    handlers = [stream]
    if run_dir and is_main:
        handlers.append(logging.FileHandler(os.path.join(run_dir, 'train.log')))
    for h in handlers:
        h.setFormatter(fmt)
        setattr(h, _OWN, True)
        logger.addHandler(h)


def close_logging() -> None:
    """Remove and close the handlers :func:`setup_logging` added; the logger propagates again, as by default."""
    for h in list(logger.handlers):
        if getattr(h, _OWN, False):
            logger.removeHandler(h)
            h.close()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
