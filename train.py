"""Train a segmentation model, standard or adversarial: ``python train.py attack=eroseg model=deeplabv3``."""

import hydra
from omegaconf import DictConfig

from eroseg_at.training.runner import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    result = train(cfg)
    clean = result.val_scores.get("clean/miou")
    robust = {key.split("/")[0]: value for key, value in result.val_scores.items() if key.endswith("/miou")}
    print(f"\nrun directory: {result.output_dir}")
    for name, value in robust.items():
        print(f"final val mIoU ({name}): {100 * value:.2f}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"last checkpoint: {result.last_checkpoint}")
    if result.wandb_dir is not None:
        print(f"W&B run directory (offline runs: `wandb sync {result.wandb_dir}`): {result.wandb_dir}")
    # Returned for Hydra sweepers that optimise a value.
    return clean


if __name__ == "__main__":
    main()
