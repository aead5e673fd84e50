"""The W&B erosion panels carry a caption that says which image and epoch they show and what each row is."""

from __future__ import annotations

import torch

from eroseg_at.training.erosion import ErosionRecord, panel_captions, panels_of


def test_every_erosion_panel_has_a_caption_naming_its_image_epoch_and_rows():
    images, steps = 2, 3
    record = ErosionRecord(
        epoch=4,
        eps=8 / 255,
        ignore_index=255,
        indices=[7, 9],
        images=torch.rand(images, 3, 8, 8),
        labels=torch.zeros(images, 8, 8, dtype=torch.long),
        taus=[0.5, 0.25, 0.125],
        deltas=torch.zeros(steps + 1, images, 3, 8, 8),
        sensitive=torch.zeros(steps, images, 8, 8, dtype=torch.bool),
    )
    panels, captions = panels_of(record), panel_captions(record)
    assert {key: len(pictures) for key, pictures in panels.items()} == {
        key: len(texts) for key, texts in captions.items()
    }
    first, second = captions["train/erosion_multi_step"]
    assert first.startswith("training image 7, after epoch 5. Top row, iterations t = 0..2")
    assert "tau_t = 0.500, 0.250, 0.125" in first and "Bottom row: |delta_t - delta_0| / eps" in first
    assert second.startswith("training image 9")
