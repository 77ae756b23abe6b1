"""The command-line entry points, run in-process with tiny settings."""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(relative_path):
    spec = importlib.util.spec_from_file_location(os.path.basename(relative_path)[:-3],
                                                  os.path.join(ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_detect_demo_tool_writes_a_png(tmp_path):
    out = tmp_path / 'demo.png'
    metrics = _load('tools/detect_demo.py').main([
        '--embed-dim', '32', '--depth', '1', '--out-channels', '16', '--size', '64', '96', '--steps', '2',
        '--batch-size', '2', '--num-train', '4', '--num-test', '3', '--out', str(out)])
    assert {'map', 'recall', 'agnostic_map'} <= set(metrics)
    with Image.open(out) as image:
        # three 96 x 64 test images, enlarged 3x, side by side 4 px apart, over a 14 px legend
        assert image.size == (3 * 3 * 96 + 2 * 4, 3 * 64 + 14) and image.mode == 'RGB'
        strip = np.asarray(image)[-14:]
    colours = {tuple(c) for c in strip.reshape(-1, 3)}
    assert (255, 0, 0) in colours and (0, 255, 0) in colours     # the legend shows both box colours


def test_labels_of_overlapping_boxes_do_not_overlap():
    import torch
    from vim.detection.engine import draw_detections, place_labels
    boxes = [[10, 30, 60, 80], [12, 32, 62, 82], [11, 31, 40, 50], [70, 0, 90, 20]]
    rects = place_labels(boxes, [(40, 11)] * 4, (100, 120))
    for i, a in enumerate(rects):
        assert 0 <= a[0] and a[2] <= 120 and 0 <= a[1] and a[3] <= 100
        for b in rects[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    assert rects[0] == (10, 19, 50, 30)                            # the first label sits just above its box
    prediction = {'boxes': torch.tensor(boxes, dtype=torch.float32), 'labels': torch.tensor([1, 2, 1, 2]),
                  'scores': torch.tensor([0.9, 0.8, 0.7, 0.6])}
    drawn = draw_detections(torch.rand(3, 100, 120), prediction, ['bg', 'circle', 'square'])
    assert drawn.shape == (3, 100, 120) and drawn.dtype == torch.uint8


def test_throughput_bench_runs_on_the_cpu(tmp_path):
    out = tmp_path / 'bench.json'
    result = _load('bench/detection_throughput.py').main([
        '--device', 'cpu', '--model', 'vim_tiny_patch16_224', '--embed-dim', '32', '--depth', '1',
        '--batch-size', '2', '--size', '64', '96', '--steps', '2', '--warmup', '0', '--amp', 'none',
        '--out', str(out)])
    saved = json.loads(out.read_text())
    assert saved['image_size'] == [64, 96] and saved['batch_size'] == 2 and len(saved['step_times_s']) == 2
    assert saved['images_per_s'] == pytest.approx(2 / saved['median_step_s'])
    assert result['final_loss'] > 0


def test_throughput_bench_rejects_unknown_amp():
    from vim.detection.benchmark import benchmark_training_steps
    with pytest.raises(ValueError, match="amp must be one of"):
        benchmark_training_steps(amp='fp8', device='cpu')
