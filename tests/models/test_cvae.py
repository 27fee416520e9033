"""The conditional VAE: its densities against quadrature, its bounds, recording, and the
command line."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from models.cvae import CVAE, Condition, CVAEGuide
from pyro_vae.cli import main
from pyro_vae.convnets import ConvDecoder, ConvEncoder
from pyro_vae.estimators.compiled import CompiledELBO
from pyro_vae.evaluate import elbo_per_datapoint, iwae_log_likelihood
from pyro_vae.svi_step import GroupedAdam, SVIStep


def _tiny(seed: int = 0) -> tuple[CVAE, CVAEGuide]:
    torch.manual_seed(seed)
    model = CVAE(x_dim=3, num_classes=2, latent_dim=1, hidden_dims=(4,))
    return model, model.make_guide()


def _log_p_x_given_y(model: CVAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log ∫ p(x | z, y) N(z; 0, 1) dz by the trapezoid rule on [-12, 12], 24,001 points:
    the integrand is smooth and its tails beyond 12 weigh < e^-72."""
    z = torch.linspace(-12.0, 12.0, 24_001, dtype=torch.float64)[:, None, None]  # [G, 1, 1]
    with torch.no_grad():
        c = model.condition(y, x)
        logits = model.logits(z.float().expand(-1, x.shape[0], 1), c).double()
    log_lik = torch.distributions.Bernoulli(logits=logits).log_prob(x.double()).sum(-1)
    log_prior = -0.5 * z[..., 0] ** 2 - 0.5 * math.log(2 * math.pi)
    values = (log_lik + log_prior).exp()  # [G, B]
    return torch.trapezoid(values, z[:, :, 0], dim=0).log()


def test_iwae_log_p_x_given_y_matches_quadrature_and_the_elbo_lies_below():
    model, guide = _tiny()
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    y = torch.tensor([0, 1, 1, 0])
    args = (x, y, torch.ones(4, dtype=torch.bool))
    exact = _log_p_x_given_y(model, x, y)
    pyro.set_rng_seed(0)
    iwae = iwae_log_likelihood(model, guide, args, num_samples=20_000)
    # log-mean of 20,000 weights whose relative sd is below 1 (q is near the broad
    # posterior of 3 pixels): the estimate's sd is < 1/sqrt(20,000) = 0.007 nats
    assert iwae.double() == pytest.approx(exact, abs=0.03)
    elbo = elbo_per_datapoint(model, guide, args, num_samples=20_000)
    assert (elbo.double() < exact).all()  # Jensen; the gap is far above the MC error here
    # the label matters: the same image under the other label has another likelihood
    other = _log_p_x_given_y(model, x, 1 - y)
    assert (other - exact).abs().max() > 1e-3


def test_vectorized_particles_broadcast_the_condition():
    model, guide = _tiny()
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    args = (x, torch.tensor([0, 1]), torch.ones(2, dtype=torch.bool))
    pyro.set_rng_seed(1)
    looped = elbo_per_datapoint(model, guide, args, 64, vectorize_particles=False)
    pyro.set_rng_seed(1)
    vectorized = elbo_per_datapoint(model, guide, args, 64, vectorize_particles=True)
    # both are 64-draw means of the same ELBO: their difference has sd < 0.3 nats here
    assert torch.allclose(looped, vectorized, atol=1.0)


def test_generate_given_draws_one_image_per_label():
    model, _ = _tiny()
    images = model.generate_given(torch.tensor([0, 1, 1]))
    assert images.shape == (3, 3) and ((images >= 0) & (images <= 1)).all()


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        (torch.tensor([0, 7, 1]), r"y: labels span 0..7; expected classes 0..1"),
        (torch.tensor([-1, 0, 1]), r"y: labels span -1..1"),
        (torch.tensor([0.0, 1.7, 1.0]), r"y: a label 1.7 is not a whole number"),
    ],
)
def test_labels_that_are_no_class_are_refused_by_model_guide_and_generate_given(labels, words):
    """Tester EM: from Python, a label outside 0..C−1 or a fractional one became an
    all-zero condition, and the ELBO and conditional samples came back as numbers."""
    model, guide = _tiny()
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    for call in (lambda: model(x, labels), lambda: guide(x, labels),
                 lambda: model.generate_given(labels)):  # fmt: skip
        with pytest.raises(ValueError, match=words):
            call()


def test_a_recorded_step_of_labels_reads_no_value():
    """The check steps aside while a step is recorded (a recording cannot read values):
    the CVAE stays recordable, and its compiled loss is the uncompiled one."""
    from pyro_vae.estimators import get
    from pyro_vae.estimators.compiled import CompiledELBO

    model, guide = _tiny()
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    args = (x, torch.tensor([0, 1]), torch.ones(2, dtype=torch.bool))
    losses = []
    for elbo in (get("trace"), CompiledELBO(get("trace"))):
        pyro.set_rng_seed(0)
        losses.append(elbo.loss(model, guide, *args))
    assert losses[0] == losses[1]


def test_a_float_condition_is_used_as_it_is():
    model = CVAE(x_dim=4, condition_dim=2, latent_dim=1, hidden_dims=(3,))
    c = model.condition(torch.tensor([[0.5, 1.0]]), torch.zeros(1, 4))
    assert torch.equal(c, torch.tensor([[0.5, 1.0]]))
    guide = model.make_guide()
    x = torch.ones(5, 4)
    assert guide(x, torch.rand(5, 2)).shape == (5, 1)


@pytest.mark.parametrize("shape", [(5,), (5, 3), (5, 1)])
def test_a_float_condition_of_the_wrong_shape_is_refused_naming_y(shape):
    # tester EZ: a [B] condition for condition_dim=1 failed in the decoder's matmul
    model = CVAE(x_dim=4, condition_dim=2 if shape == (5, 1) else 1, latent_dim=1)
    guide = model.make_guide()
    width = model.condition.width
    expected = re.escape(f"y: a condition of shape {shape}; expected [B, {width}]")
    with pytest.raises(ValueError, match=expected):
        elbo_per_datapoint(model, guide, (torch.ones(5, 4), torch.rand(shape)))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({}, "num_classes, condition_dim: None and None; expected exactly one"),
        ({"num_classes": 2, "condition_dim": 3}, "expected exactly one"),
        ({"num_classes": 0}, "num_classes: 0 is not a positive integer"),
        ({"condition_dim": 1.5}, "condition_dim: 1.5 is not a positive integer"),
    ],
)
def test_bad_conditions_are_refused_by_name(kwargs, words):
    with pytest.raises(ValueError) as raised:
        Condition(**kwargs)
    assert words in str(raised.value)


def test_arch_and_latent_dim_are_checked():
    # conv is offered now (tests/models/test_cvae_conv.py); it needs the images' shape
    with pytest.raises(ValueError, match="image_shape: None; arch='conv' needs the images'"):
        CVAE(4, num_classes=2, arch="conv")
    with pytest.raises(ValueError, match="arch: 'resnet' is not one of mlp, conv"):
        CVAE(4, num_classes=2, arch="resnet")
    with pytest.raises(ValueError, match="latent_dim: 0 is not a positive integer"):
        CVAE(4, num_classes=2, latent_dim=0)


@pytest.mark.parametrize(
    "networks",
    [{}, {"arch": "conv", "image_shape": (1, 2, 3), "channels": (2,)}],
    ids=["mlp", "conv"],
)
def test_recorded_steps_equal_the_plain_ones_bit_for_bit(networks):
    # what recordable = True promises: no branching on tensor values (conv: 2x3 -> 1x1)
    g = torch.Generator().manual_seed(1)
    batches = [
        (
            (torch.rand(n, 6, generator=g) > 0.5).float(),
            torch.randint(0, 3, (n,), generator=g),
            torch.ones(n, dtype=torch.bool),
        )
        for n in (10, 10, 4)
    ]

    def train(compiled: bool):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = CVAE(6, num_classes=3, latent_dim=2, hidden_dims=(5,), **networks)
        guide = model.make_guide()
        elbo = CompiledELBO(Trace_ELBO()) if compiled else Trace_ELBO()
        svi = SVIStep(model, guide, GroupedAdam({"lr": 0.01}), elbo)
        losses = [svi.step(*b, num_data=50) for _ in range(2) for b in batches]
        return losses, {**model.state_dict(), **guide.state_dict()}

    losses, weights = train(False)
    ours, our_weights = train(True)
    for key, value in weights.items():
        assert torch.equal(our_weights[key], value), key
    assert ours == pytest.approx(losses, rel=1e-6)


def test_the_command_line_fits_and_evaluates_log_p_x_given_y(tmp_path, capsys):
    out = tmp_path / "cvae"
    code = main(
        [
            "fit",
            "--model",
            "models.cvae:CVAE",
            "--data",
            "digits",
            "--latent-dim",
            "2",
            "--hidden",
            "16",
            "--epochs",
            "1",
            "--ll-samples",
            "8",
            "--ll-points",
            "20",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "test ELBO | y" in printed and "test log p(x | y) (IWAE)" in printed
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert test["conditioned_on_labels"] is True and test["labels_in_bound"] == "conditioned"
    assert test["log_likelihood"] >= test["elbo"] - 1.0  # IWAE(K=8) vs 10-draw ELBO
    assert "reconstruction_mse" in test["skipped"]
    assert (out / "conditional_samples.png").exists() and not (out / "samples.png").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["model_options"]["latent_dim"] == 2
    assert config["model_options"]["hidden_dims"] == [16]
    arguments = json.loads((out / "metrics.json").read_text())["model_arguments"]
    assert arguments["num_classes"] == 10  # offered by build to a model that uses labels
    # `sample` draws --num images in all, classes cycled (30 had been drawn for 25)
    capsys.readouterr()
    assert main(["sample", str(out), "--num", "25", "--out", str(out / "s.png")]) == 0
    assert "wrote 25 conditional samples, classes cycled (of 10)" in capsys.readouterr().out
    assert (out / "s.png").stat().st_size > 1000


# --- arch="conv" --------------------------------------------------------------------------

SHAPE = (2, 4, 4)  # two channels, so the channel layout is exercised; 4 -> 2 -> 1


def _conv(seed: int = 0, **options) -> tuple[CVAE, CVAEGuide]:
    torch.manual_seed(seed)
    options = {"num_classes": 2, "latent_dim": 1, "hidden_dims": (4,), **options}
    model = CVAE(32, arch="conv", image_shape=SHAPE, channels=(3, 5), **options)
    return model, model.make_guide()


def _conv_batch(rows: int = 4, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((rows, 32), 0.5), generator=g)
    return x, torch.arange(rows) % 2, torch.ones(rows, dtype=torch.bool)


def test_conv_networks_are_convnets_with_the_condition_after_the_convolutions():
    model, guide = _conv()
    assert isinstance(model.decoder, ConvDecoder) and isinstance(guide.features, ConvEncoder)
    # [z, c(y)] enters the decoder's first linear layer; [φ(x), c(y)] the guide's MLP
    assert model.decoder.net.input_shape == (1 + 2,)
    assert guide.encoder.trunk[0].in_features == guide.features.out_features + 2 == 5 + 2
    mlp_guide = CVAE(32, num_classes=2, hidden_dims=(4,)).make_guide()
    assert not list(mlp_guide.features.parameters())  # the MLP guide is as it was


def test_conv_shapes_under_vectorized_particles():
    model, guide = _conv(latent_dim=3)
    x, y, seen = _conv_batch(5)
    z = torch.randn(7, 5, 3)  # [S, B, latent_dim], as vectorized particles draw it
    assert model.logits(z, model.condition(y, x)).shape == (7, 5, 32)
    trace = poutine.trace(guide).get_trace(x, y, seen)
    assert trace.nodes["z"]["value"].shape == (5, 3)
    pyro.set_rng_seed(0)
    vectorized = elbo_per_datapoint(model, guide, (x, y, seen), 6, vectorize_particles=True)
    assert vectorized.shape == (5,) and torch.isfinite(vectorized).all()


def test_conv_elbo_equals_a_hand_computation_on_the_guides_draw():
    model, guide = _conv(latent_dim=2)
    x, y, seen = _conv_batch(4)
    pyro.set_rng_seed(5)
    loss = Trace_ELBO().differentiable_loss(model, guide, x, y, seen)
    pyro.set_rng_seed(5)
    z = poutine.trace(guide).get_trace(x, y, seen).nodes["z"]["value"]  # the same draw
    with torch.no_grad():  # the networks called directly, scored with torch distributions
        code = torch.nn.functional.one_hot(y, 2).float()
        h = guide.encoder.trunk(torch.cat([guide.features(x), code], -1))
        q = torch.distributions.Normal(
            guide.encoder.loc_head(h), guide.encoder.log_scale_head(h).exp()
        )
        logits = model.decoder(torch.cat([z, code], -1))
        log_lik = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        by_hand = (log_lik + log_prior - q.log_prob(z).sum(-1)).sum()
    assert -loss.item() == pytest.approx(by_hand.item(), abs=1e-4)


def test_conv_iwae_log_p_x_given_y_matches_quadrature():
    model, guide = _conv()
    x, y, seen = _conv_batch(4)
    exact = _log_p_x_given_y(model, x, y)
    pyro.set_rng_seed(0)
    iwae = iwae_log_likelihood(model, guide, (x, y, seen), num_samples=20_000)
    # as the MLP's: 20,000 weights of relative sd below 1 (an untrained 1-d posterior over
    # 32 pixels stays broad), so the estimate's sd is < 0.007 nats
    assert iwae.double() == pytest.approx(exact, abs=0.03)
    pyro.set_rng_seed(0)
    elbo = elbo_per_datapoint(model, guide, (x, y, seen), num_samples=20_000)
    assert (elbo.double() < exact).all()


@pytest.mark.parametrize(
    ("options", "shape", "out"),
    [
        ({"condition_dim": 3}, (1, 28, 28), 784),
        ({"num_classes": 4, "likelihood": "categorical", "levels": 5}, (3, 32, 32), 3072 * 5),
    ],
)
def test_conv_takes_the_usual_image_shapes_and_a_float_condition(options, shape, out):
    pixels = math.prod(shape)
    model = CVAE(
        pixels,
        arch="conv",
        image_shape=shape,
        channels=(2, 4),
        latent_dim=2,
        hidden_dims=(8,),
        **{"num_classes": None, **options},
    )
    guide = model.make_guide()
    y = torch.rand(3, 3) if "condition_dim" in options else torch.tensor([0, 3, 1])
    x = torch.zeros(3, pixels)
    assert model.logits(torch.zeros(2, 3, 2), model.condition(y, x)).shape == (2, 3, out)
    assert guide(x, y).shape == (3, 2)
    assert model.generate_given(y).shape == (3, pixels)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"image_shape": (1, 5, 5)}, "image_shape: (1, 5, 5) has 25 pixels, but x_dim is 32"),
        ({"image_shape": (2, 4, 4), "channels": (2, 2, 2)}, "these images take at most 2"),
        ({"image_shape": (32,)}, "image_shape: (32,); expected the images' (H, W) or (C, H, W)"),
    ],
)
def test_conv_refuses_images_its_convolutions_cannot_take(options, words):
    with pytest.raises(ValueError) as raised:
        CVAE(32, num_classes=2, arch="conv", **options)
    assert words in str(raised.value)


def test_the_command_line_fits_a_conv_cvae_on_colour_images(tmp_path, capsys):
    g = np.random.default_rng(0)
    y = np.arange(48) % 3
    x = (g.random((48, 3, 32, 32)) < (0.2 + 0.3 * y)[:, None, None, None]).astype(np.float32)
    np.savez(tmp_path / "colour.npz", x=x, y=y)
    out = tmp_path / "run"
    argv = ["fit", "--model", "models.cvae:CVAE", "--data", str(tmp_path / "colour.npz")]
    argv += ["--arch", "conv", "--channels", "2", "4", "--hidden", "8", "--latent-dim", "2"]
    argv += ["--epochs", "1", "--ll-samples", "4", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "test log p(x | y) (IWAE)" in printed
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert math.isfinite(test["elbo"]) and test["labels_in_bound"] == "conditioned"
    arguments = json.loads((out / "metrics.json").read_text())["model_arguments"]
    assert arguments["arch"] == "conv" and tuple(arguments["image_shape"]) == (3, 32, 32)
    assert (out / "conditional_samples.png").is_file()
