"""PNG plots of a run's loss, accuracy and learning rate from its metrics rows (needs matplotlib)."""
import logging
import os
from typing import Dict, List

__all__ = ['write_plots']

logger = logging.getLogger('vim.train')
_warned = False


def write_plots(rows: List[Dict], folder: str) -> List[str]:
    """Write loss.png, accuracy.png and lr.png into ``folder``; returns the paths written.

    Without matplotlib (the ``plots`` extra) it warns once and writes nothing.
    """
    global _warned
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        if not _warned:
            logger.warning("matplotlib is not installed: skipping plots (pip install 'vim[plots]')")
            _warned = True
        return []
    steps = [r for r in rows if r.get('type') == 'step']
    epochs = [r for r in rows if r.get('type') == 'epoch']
    written = []

    def save(fig, name):
        path = os.path.join(folder, name)
        fig.tight_layout()
        fig.savefig(path + '.tmp.png', dpi=100)
        os.replace(path + '.tmp.png', path)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(6, 4))
    if steps:
        ax.plot([r['step'] for r in steps], [r['loss'] for r in steps], label='train (steps)', alpha=0.6)
    if epochs:
        ax.plot([r['step'] for r in epochs], [r['train_loss'] for r in epochs], 'o-', label='train (epoch mean)')
        val = [r for r in epochs if r.get('val_loss') is not None]
        if val:
            ax.plot([r['step'] for r in val], [r['val_loss'] for r in val], 's-', label='val')
    ax.set_xlabel('step')
    ax.set_ylabel('loss')
    ax.legend()
    save(fig, 'loss.png')

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (('val_top1', 'top-1'), ('val_top5', 'top-5'), ('ema_top1', 'EMA top-1'), ('ema_top5', 'EMA top-5')):
        pts = [r for r in epochs if r.get(key) is not None]
        if pts:
            ax.plot([r['epoch'] for r in pts], [r[key] for r in pts], 'o-', label=label)
    ax.set_xlabel('epoch')
    ax.set_ylabel('accuracy (%)')
    ax.legend()
    save(fig, 'accuracy.png')

    fig, ax = plt.subplots(figsize=(6, 4))
    if steps:
        ax.plot([r['step'] for r in steps], [r['lr'] for r in steps])
    ax.set_xlabel('step')
    ax.set_ylabel('learning rate')
    save(fig, 'lr.png')
    return written
