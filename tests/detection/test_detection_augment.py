"""Box-aware augmentation: boxes and masks move with the image, seeded draws repeat, bad input is named."""
import pytest
import torch

pytest.importorskip('albumentations')

from vim.detection import AugmentedDetectionDataset, ShapesDataset, detection_augmentation  # noqa: E402


def mask_box(mask):
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    return torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)


def test_flip_moves_boxes_and_masks_with_the_image():
    data = ShapesDataset(4, (48, 64), objects=(2, 3), object_size=(8, 16), masks=True, seed=1)
    flip = AugmentedDetectionDataset(data, detection_augmentation(hflip=1.0, scale=0, translate=0,
                                                                  color_jitter=0))
    for i in range(len(data)):
        (image, target), (flipped, moved) = data[i], flip[i]
        assert torch.allclose(flipped, image.flip(-1), atol=1 / 255 + 1e-6)  # uint8 round trip
        assert torch.equal(moved['labels'], target['labels'])
        expect = target['boxes'].clone()
        expect[:, [0, 2]] = 64 - target['boxes'][:, [2, 0]]
        torch.testing.assert_close(moved['boxes'], expect)
        assert torch.equal(moved['masks'], target['masks'].flip(-1))


def test_jitter_keeps_boxes_on_their_masks_and_repeats_per_seed():
    data = ShapesDataset(6, 64, objects=(1, 3), object_size=(10, 20), masks=True, seed=2)
    first, again = AugmentedDetectionDataset(data, seed=5), AugmentedDetectionDataset(data, seed=5)
    differs = False
    for i in range(len(data)):
        image, target = first[i]
        image2, target2 = again[i]
        assert torch.equal(image, image2) and torch.equal(target['boxes'], target2['boxes'])
        assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
        assert len(target['boxes']) == len(target['labels']) == len(target['masks'])
        for box, mask in zip(target['boxes'], target['masks']):
            if mask.any():
                assert (box - mask_box(mask)).abs().max() <= 2.0  # the affine resamples edges
        differs |= not torch.equal(image, first[i][0])  # a second read draws a new augmentation
    assert differs


def test_wrong_image_shape_is_named():
    class Grey(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.rand(1, 8, 8), {'boxes': torch.zeros(0, 4), 'labels': torch.zeros(0, dtype=torch.int64)}
    with pytest.raises(ValueError, match=r'expected an image of shape \(3, H, W\), got \(1, 8, 8\)'):
        AugmentedDetectionDataset(Grey())[0]
