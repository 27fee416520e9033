"""The model protocol: what a model may offer, asked in one place."""

import ast
from pathlib import Path

import pytest
import torch

from models.autoencoder import Autoencoder
from models.vae import VAE
from pyro_vae.guides import AmortizedNormal
from pyro_vae.model_protocol import (
    OPTIONAL_METHODS,
    Decodes,
    Encodes,
    Generates,
    MakesGuide,
    declares_recordable,
    offered,
    tied_guide,
)

PACKAGE = Path(__file__).resolve().parents[2] / "pyro_vae"


def test_offered_returns_the_bound_method_or_none():
    vae = VAE(x_dim=4, latent_dim=2, hidden_dims=(3,))
    decode = offered(vae, "decode")
    assert decode is not None and decode.__self__ is vae
    assert decode(torch.zeros(5, 2)).shape == (5, 4)
    assert offered(vae, "encode") is None  # a VAE's encoder is its guide's
    assert offered(lambda x: None, "generate") is None


def test_an_attribute_that_is_not_callable_is_not_an_offer():
    class Model:
        decode = 3

    assert offered(Model(), "decode") is None


def test_only_the_protocol_s_methods_can_be_asked_for():
    with pytest.raises(ValueError, match="method: 'forward' is not one of decode, encode"):
        offered(object(), "forward")


def test_the_shipped_models_satisfy_the_parts_they_offer():
    vae = VAE(x_dim=4, latent_dim=2, hidden_dims=(3,))
    assert isinstance(vae, Decodes) and isinstance(vae, Generates) and isinstance(vae, MakesGuide)
    assert not isinstance(vae, Encodes)
    assert isinstance(vae.make_guide(), Encodes)
    autoencoder = Autoencoder(x_dim=4, latent_dim=2, hidden_dims=(3,))
    assert isinstance(autoencoder, Encodes) and isinstance(autoencoder, Decodes)


def test_training_terms_are_the_declared_ones_then_the_batch_terms():
    from pyro_vae.model_protocol import batch_terms, training_terms

    class Model:
        training_terms = ("a",)
        batch_terms = ("b", "a")

        def model(self, x):
            pass

    assert training_terms(Model().model) == ("a", "b")  # a bound method's object is asked
    assert batch_terms(Model) == ("b", "a") and training_terms(object()) == ()

    class OneName:
        training_terms = "penalty"  # tester ED: read letter by letter
        batch_terms = "classifier"

    assert training_terms(OneName) == ("penalty", "classifier")
    assert batch_terms(OneName) == ("classifier",)


def test_a_recordable_declaration_belongs_to_the_class_that_makes_it():
    class UserVAE(VAE):  # may add a branch on a value: must declare again
        pass

    def function_model(x):
        pass

    vae = VAE(x_dim=4, latent_dim=2, hidden_dims=(3,))
    assert declares_recordable(VAE) and declares_recordable(vae)
    assert declares_recordable(AmortizedNormal)
    assert not declares_recordable(UserVAE) and not declares_recordable(function_model)
    function_model.recordable = True
    assert declares_recordable(function_model)

    class Pair:
        recordable = True

        def model(self, x):
            pass

    assert declares_recordable(Pair().model)  # a bound method: its object's class decides


def test_no_other_module_asks_whether_a_model_offers_a_method():
    asked = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "model_protocol.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) in ("hasattr", "getattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in (*OPTIONAL_METHODS, "recordable")
            ):
                asked.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not asked, f"ask through pyro_vae.model_protocol.offered: {asked}"


def test_a_tied_guide_is_read_from_the_model_or_its_bound_method_s_object():
    vamp = VAE(x_dim=4, latent_dim=2, hidden_dims=(3,), prior="vamp", prior_components=2)
    assert tied_guide(vamp) is vamp.make_guide() is tied_guide(vamp.forward)
    assert tied_guide(VAE(x_dim=4, latent_dim=2, hidden_dims=(3,))) is None
    assert tied_guide(lambda x: None) is None


def _log_joint(model, args, seed=0):
    import pyro

    with pyro.validation_enabled(False):
        pyro.set_rng_seed(seed)
        return pyro.poutine.trace(model).get_trace(*args).log_prob_sum()


@pytest.mark.parametrize("kind", ["vamp", "m2"])
def test_converting_a_model_converts_the_guide_it_holds_but_does_not_own(kind):
    """VAE(prior="vamp").double() left its tied guide (the VampPrior's encoder) in float32,
    and the model's first run raised "mat1 and mat2 must have the same dtype"; M2's
    classifier term likewise. Expected value: an identical model whose guide was converted
    on its own, as a user had to before."""
    from models.m2 import M2

    def make():
        torch.manual_seed(0)
        if kind == "vamp":
            return VAE(x_dim=6, latent_dim=2, hidden_dims=(5,), prior="vamp", prior_components=3)
        return M2(x_dim=6, num_classes=3, latent_dim=2, hidden_dims=(5,))

    model, by_hand = make(), make()
    keys = set(model.state_dict())
    model.double()
    torch.nn.Module.double(by_hand)  # the model's own modules only, as before the fix
    by_hand.tied_guide.double()
    assert {p.dtype for p in model.tied_guide.parameters()} == {torch.float64}
    assert set(model.state_dict()) == keys  # still held, not owned
    args = (torch.bernoulli(torch.full((4, 6), 0.5, dtype=torch.float64)),)
    if kind == "m2":  # labels, two of them observed: the classifier term runs
        args += (torch.tensor([0, 1, 2, 0]), torch.tensor([True, True, False, False]))
    got = _log_joint(model, args)
    assert got.dtype == torch.float64
    assert torch.equal(got, _log_joint(by_hand, args))
    model.to("meta")
    assert {p.device.type for p in model.tied_guide.parameters()} == {"meta"}


@pytest.mark.parametrize("kind", ["vamp", "m2"])
def test_eval_and_train_on_a_model_set_the_mode_of_the_guide_it_holds(kind):
    """model.eval() left the tied guide (a VampPrior's encoder, M2's classifier) in training
    mode, so its Dropout stayed on while the model was scored. Expected: the guide's
    modules follow the model's flag, as its own submodules' do, and stay unowned."""
    from models.m2 import M2

    if kind == "vamp":
        model = VAE(x_dim=6, latent_dim=2, hidden_dims=(5,), prior="vamp", prior_components=3)
    else:
        model = M2(x_dim=6, num_classes=3, latent_dim=2, hidden_dims=(5,))
    keys = set(model.state_dict())
    assert model.eval() is model
    assert {m.training for m in model.tied_guide.modules()} == {False}
    model.train()
    assert {m.training for m in model.tied_guide.modules()} == {True}
    assert set(model.state_dict()) == keys
