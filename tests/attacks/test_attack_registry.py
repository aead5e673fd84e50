"""Building attacks: the registry, argument checks with clear messages, and the Hydra configs."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir

from eroseg_at.attacks import APGD, RPPGD, Attack, EroSeg, available_attacks, build_attack
from eroseg_at.attacks.arguments import parse_number
from eroseg_at.attacks.registry import ATTACKS

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf" / "attack"
ATTACK_CONFIGS = sorted(path for path in CONFIG_DIR.glob("*.yaml") if path.stem != "none")


def test_available_attacks_are_the_issue_list():
    assert available_attacks() == ["apgd", "cospgd", "cw", "eroseg", "pgd", "rppgd", "segpgd"]


def test_every_class_is_registered_under_its_name_attribute():
    for name, cls in ATTACKS.items():
        assert cls.name == name
        assert isinstance(build_attack(name), cls)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match="unknown attack 'fgsm'; available attacks: apgd, cospgd, cw, eroseg"
    ):
        build_attack("fgsm")


@pytest.mark.parametrize(
    "text, expected", [("8/255", 8 / 255), (" 8 / 255 ", 8 / 255), ("0.03", 0.03), ("1e-2", 0.01), (2, 2.0)]
)
def test_parse_number_reads_numbers_and_fractions(text, expected):
    assert parse_number(text, "eps") == pytest.approx(expected)


@pytest.mark.parametrize("text", ["8/0", "abc", "8/255/2", "", "__import__('os')", "nan", True, None])
def test_parse_number_rejects_other_text_and_names_the_value(text):
    with pytest.raises(ValueError, match=r"eps must be"):
        parse_number(text, "eps")


def test_string_budget_reaches_the_attack():
    attack = build_attack("pgd", eps="4/255", alpha="1/255")
    assert attack.eps == pytest.approx(4 / 255) and attack.alpha == pytest.approx(1 / 255)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eps": 2}, "eps must lie in \\[0, 1\\], got 2"),
        ({"eps": -0.1, "norm": "l2"}, "eps must be >= 0, got -0.1"),
        ({"alpha": 0}, "alpha must be > 0, got 0"),
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"steps": 2.5}, "steps must be an integer >= 1, got 2.5"),
        ({"norm": "l1"}, "norm must be one of \\('linf', 'l2'\\), got 'l1'"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"random_start": "yes"}, "random_start must be a bool, got 'yes'"),
    ],
)
def test_bad_common_arguments_name_parameter_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_attack("pgd", **kwargs)


def test_targeted_only_where_the_method_has_a_targeted_form():
    for name in ("pgd", "cospgd", "cw"):
        assert build_attack(name, targeted=True).targeted
    for name in ("segpgd", "eroseg", "rppgd", "apgd"):
        with pytest.raises(ValueError, match=f"attack '{name}' has no targeted form"):
            build_attack(name, targeted=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tau0": 0}, "tau0 must lie in \\(0, 1\\]"),
        ({"tau0": 1.5}, "tau0 must lie in \\(0, 1\\]"),
        ({"lam": "7/5"}, "lam must lie in \\[0, 1\\], got '7/5'"),
        ({"beta": -1}, "beta must be >= 0"),
        ({"background_class": -1}, "background_class must be an integer >= 0"),
        ({"schedule_offset": -1}, "schedule_offset must be an integer >= 0"),
    ],
)
def test_bad_eroseg_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EroSeg(**kwargs)


def test_apgd_loss_and_class_weight_checks():
    with pytest.raises(
        ValueError,
        match="loss must be one of \\['ce', 'cospgd', 'js', 'mce', 'mce_balanced', 'segpgd'\\], got 'dlr'",
    ):
        APGD(loss="dlr")
    with pytest.raises(ValueError, match="loss='mce_balanced' needs class_weights"):
        APGD(loss="mce_balanced")
    with pytest.raises(ValueError, match="class_weights is only used by loss='mce_balanced'"):
        APGD(loss="ce", class_weights=[1.0])
    with pytest.raises(ValueError, match="class_weights must be a non-empty 1-D sequence"):
        APGD(loss="mce_balanced", class_weights=[1.0, -2.0])
    assert APGD(loss="mce_balanced", class_weights=[1, 2]).class_weights.tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"radius_factors": [2, 1.5]},
            "radius_factors must end with 1 \\(the last stage runs at eps\\), got \\(2, 1.5\\)",
        ),
        ({"radius_factors": [2, 0, 1]}, "radius_factors\\[1\\] must be > 0, got 0"),
        ({"radius_factors": "2,1"}, "radius_factors must be a non-empty sequence of numbers, got '2,1'"),
        ({"radius_factors": []}, "radius_factors must be a non-empty sequence of numbers, got \\[\\]"),
        (
            {"radius_factors": [2, 1]},
            "stage_fractions must have one entry per radius factor \\(2\\), got \\(1.0,\\)",
        ),
        (
            {"radius_factors": [2, 1], "stage_fractions": [0.5, 0.6]},
            "stage_fractions must sum to 1, got \\(0.5, 0.6\\)",
        ),
        (
            {"radius_factors": [2, 1], "stage_fractions": [0, 1]},
            "stage_fractions\\[0\\] must lie in \\(0, 1\\], got 0",
        ),
        (
            {"steps": 2, "radius_factors": [2, 1.5, 1], "stage_fractions": [0.3, 0.3, 0.4]},
            "steps=2 is fewer than",
        ),
        ({"track_loss": "js"}, "track_loss must be one of \\(None, 'ce'\\), got 'js'"),
        ({"early_stop": 1}, "early_stop must be a bool, got 1"),
        (
            {"class_weighting": "batch"},
            "class_weighting must be one of \\('dataset', 'image'\\), got 'batch'",
        ),
        (
            {"class_weighting": "image"},
            "class_weighting is only used by loss='mce_balanced', not by loss='ce'",
        ),
        (
            {"loss": "mce_balanced", "class_weighting": "image", "class_weights": [1, 2]},
            "class_weights is only used with class_weighting='dataset'",
        ),
    ],
)
def test_bad_apgd_protocol_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        APGD(**kwargs)


def test_apgd_protocol_arguments_accept_strings_and_omegaconf_lists():
    from omegaconf import OmegaConf

    attack = APGD(
        radius_factors=OmegaConf.create(["2", "3/2", 1]), stage_fractions=OmegaConf.create([0.3, 0.3, 0.4])
    )
    assert attack.radius_factors == (2.0, 1.5, 1.0) and attack.stage_fractions == (0.3, 0.3, 0.4)


def test_bad_rppgd_region_normalization():
    with pytest.raises(
        ValueError, match="region_normalization must be one of \\('image', 'valid'\\), got 'hw'"
    ):
        RPPGD(region_normalization="hw")


def test_apgd_class_weights_must_match_the_model():
    model = torch.nn.Conv2d(3, 4, 1)
    images, labels = torch.rand(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="class_weights has 3 entries but the model predicts 4 classes"):
        APGD(loss="mce_balanced", class_weights=[1, 1, 1])(model, images, labels)


def test_rppgd_explains_that_it_needs_decoder_features():
    model = torch.nn.Conv2d(3, 4, 1)
    images, labels = torch.rand(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(
        TypeError, match="needs decoder features: the model must have a method logits_and_features"
    ):
        build_attack("rppgd")(model, images, labels)


def load_config(path: Path, background_class: int | None = 0, overrides: tuple[str, ...] = ()):
    """The attack group's ``path`` composed by Hydra (its defaults list included) beside the shapes dataset."""
    background = "null" if background_class is None else background_class
    with initialize_config_dir(config_dir=str(CONFIG_DIR.parent), version_base="1.3"):
        config = compose(
            overrides=[
                f"+attack={path.stem}",
                "+dataset=shapes",
                f"dataset.background_class={background}",
                *overrides,
            ]
        )
    return config.attack


@pytest.mark.parametrize("path", ATTACK_CONFIGS, ids=[path.stem for path in ATTACK_CONFIGS])
def test_every_config_builds_its_class_with_the_shared_defaults(path):
    attack = hydra.utils.instantiate(load_config(path))
    assert isinstance(attack, Attack)
    assert attack.name == path.stem.removesuffix("_paper")
    assert type(attack) is ATTACKS[attack.name]
    assert attack.eps == pytest.approx(8 / 255)
    # steps: the training attack's default (EroSeg-AT's 3); robust validation and the suites set their own.
    assert attack.steps == 3 and attack.random_start and attack.ignore_index == 255 and attack.norm == "linf"
    if hasattr(attack, "alpha"):
        assert attack.alpha == (0.001 if path.stem == "eroseg_paper" else 0.01)


def test_configs_exist_for_every_registered_attack():
    assert {path.stem for path in ATTACK_CONFIGS} == set(available_attacks()) | {"eroseg_paper"}


@pytest.mark.parametrize("background_class", [0, None])
def test_eroseg_configs_take_background_class_from_the_dataset(background_class):
    for stem in ("eroseg", "eroseg_paper"):
        attack = hydra.utils.instantiate(load_config(CONFIG_DIR / f"{stem}.yaml", background_class))
        assert attack.background_class == background_class


def test_command_line_style_override_of_eps():
    config = load_config(CONFIG_DIR / "pgd.yaml", overrides=("attack.eps=4/255",))
    assert config.eps == "4/255"  # Hydra does no arithmetic: the attack parses the string
    assert hydra.utils.instantiate(config).eps == pytest.approx(4 / 255)
