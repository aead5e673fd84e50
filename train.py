"""Train a segmentation model, standard or adversarial: ``python train.py attack=eroseg model=deeplabv3``."""

import hydra
from omegaconf import DictConfig

from eroseg_at.training.runner import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    result = train(cfg)
    mious = {} if result.validation is None else result.validation.miou
    print(f"\nrun directory: {result.output_dir}")
    for name, value in mious.items():
        print(f"final val mIoU ({name}): {value:.2f}")
    for kind, path in (("best", result.best_checkpoint), ("last", result.last_checkpoint)):
        if path is not None and path.is_file():
            print(f"{kind} checkpoint: {path}")
    if result.wandb_dir is not None:
        print(f"W&B run directory (offline runs: `wandb sync {result.wandb_dir}`): {result.wandb_dir}")
    # Returned for Hydra sweepers that optimise a value (percent).
    return mious.get("clean")


if __name__ == "__main__":
    main()
