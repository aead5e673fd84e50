"""Train a segmentation model, standard or adversarial: ``python train.py attack=eroseg model=deeplabv3``.

The installed package runs the same app as ``eroseg-train`` (:func:`eroseg_at.cli.train_app`).
"""

from eroseg_at.cli import train_app

if __name__ == "__main__":
    train_app()
