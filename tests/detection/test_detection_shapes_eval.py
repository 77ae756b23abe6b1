import pytest
import torch

from vim.detection import ShapesDataset, average_precision, collate_detection, evaluate_detections


def test_dataset_is_deterministic_and_targets_are_tight_boxes():
    data = ShapesDataset(6, (80, 100), object_size=(12, 30), seed=5, masks=True)
    again = ShapesDataset(6, (80, 100), object_size=(12, 30), seed=5, masks=True)
    other = ShapesDataset(6, (80, 100), object_size=(12, 30), seed=6, masks=True)
    assert not torch.equal(data[0][0], other[0][0])
    for i in range(len(data)):
        image, target = data[i]
        image2, target2 = again[i]
        assert torch.equal(image, image2) and torch.equal(target['boxes'], target2['boxes'])
        assert image.shape == (3, 80, 100) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
        n = len(target['labels'])
        assert 1 <= n <= 4 and target['boxes'].shape == (n, 4) and target['masks'].shape == (n, 80, 100)
        assert set(target['labels'].tolist()) <= {1, 2}
        for box, mask in zip(target['boxes'], target['masks']):
            ys, xs = mask.nonzero(as_tuple=True)
            # the box is the tight box of the mask's pixels (x1, y1 exclusive)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
            assert 12 <= box[2] - box[0] <= 30 and 12 <= box[3] - box[1] <= 30
        # objects never overlap
        assert target['masks'].sum(0).max() <= 1


def test_shapes_differ_by_class():
    """Rectangles fill their box, ellipses about pi/4 of it: the label describes what is drawn."""
    data = ShapesDataset(20, (96, 96), object_size=(20, 40), seed=1, masks=True)
    fill = {1: [], 2: []}
    for _, target in data:
        for label, box, mask in zip(target['labels'], target['boxes'], target['masks']):
            area = (box[2] - box[0]) * (box[3] - box[1])
            fill[int(label)].append(float(mask.sum() / area))
    assert min(fill[1]) == 1.0
    assert max(fill[2]) < 0.85 and min(fill[2]) > 0.7


def test_dataset_rejects_bad_settings():
    with pytest.raises(ValueError, match='below the image size'):
        ShapesDataset(1, (32, 32), object_size=(10, 40))
    with pytest.raises(IndexError):
        ShapesDataset(2)[2]


def test_collate_keeps_lists():
    images, targets = collate_detection([ShapesDataset(2, 64, object_size=(10, 20))[i] for i in range(2)])
    assert isinstance(images, list) and len(images) == 2 and isinstance(targets, list)


def test_average_precision_known_curves():
    # one true positive at full recall, then a false positive: AP 1
    assert average_precision(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.5])) == pytest.approx(1.0)
    # a false positive first, then the only true positive: precision 1/2 at recall 1
    assert average_precision(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5])) == pytest.approx(0.5)
    # two ground truths, only one found: AP 1/2
    assert average_precision(torch.tensor([0.5]), torch.tensor([1.0])) == pytest.approx(0.5)


def test_evaluation_of_perfect_shifted_and_mislabelled_predictions():
    data = ShapesDataset(5, (80, 100), object_size=(12, 30), seed=2)
    targets = [data[i][1] for i in range(len(data))]

    def predictions(boxes_fn, labels_fn):
        return [{'boxes': boxes_fn(t['boxes']), 'labels': labels_fn(t['labels']),
                 'scores': torch.linspace(0.9, 0.6, len(t['labels']))} for t in targets]

    perfect = evaluate_detections(predictions(lambda b: b, lambda l: l), targets, num_classes=3)
    assert perfect['map'] == pytest.approx(1.0) and perfect['recall'] == 1.0 and perfect['precision'] == 1.0
    # boxes shifted by their own size: IoU 0, nothing found
    shifted = evaluate_detections(
        predictions(lambda b: b + (b[:, 2:] - b[:, :2]).repeat(1, 2), lambda l: l), targets, num_classes=3)
    assert shifted['map'] == 0.0 and shifted['recall'] == 0.0
    # every label swapped
    swapped = evaluate_detections(predictions(lambda b: b, lambda l: 3 - l), targets, num_classes=3)
    assert swapped['map'] == 0.0 and swapped['precision'] == 0.0
    with pytest.raises(ValueError, match='Got 4 predictions for 5 targets'):
        evaluate_detections(predictions(lambda b: b, lambda l: l)[:4], targets, num_classes=3)
