import pytest
import torch
import torchvision

import resnet
from resnet import BasicBlock, Bottleneck, ResNet, get_model, list_models
from resnet.models.resnet import FlipTTA, resnet18

EXPECTED_PARAMS = {
    "resnet10": 5_418_792,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def torchvision_model(name: str, **kwargs) -> torch.nn.Module:
    """torchvision's model of that name; resnet10, which it does not name, from its own ResNet class."""
    if name == "resnet10":
        from torchvision.models.resnet import BasicBlock as TVBasicBlock, ResNet as TVResNet

        return TVResNet(TVBasicBlock, [1, 1, 1, 1], **kwargs)
    return getattr(torchvision.models, name)(**kwargs)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_depth():
    assert list_models() == list(EXPECTED_PARAMS)
    for name in list_models():
        assert name in resnet.__all__ and getattr(resnet, name).__name__ == name


def test_registry_sorts_variants_by_depth_then_name(monkeypatch):
    from resnet.models import resnet as model

    for name in ("resnet50d", "resnet26", "resnet200"):
        monkeypatch.setitem(model._MODELS, name, resnet18)
    assert list_models() == ["resnet10", "resnet18", "resnet26", "resnet34", "resnet50", "resnet50d", "resnet101",
                             "resnet152", "resnet200"]


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_parameter_count(name):
    assert count_params(get_model(name)) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_state_dict_loads_from_torchvision_and_outputs_match(name):
    torch.manual_seed(0)
    reference = torchvision_model(name).eval()
    ours = get_model(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_forward_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=7)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name,channels", [("resnet18", 512), ("resnet50", 2048)])
def test_include_top_false_returns_feature_map(name, channels):
    model = get_model(name, include_top=False).eval()
    assert not any(k.startswith("fc.") for k in model.state_dict())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, channels, 2, 3)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling_returns_vectors(pooling):
    model = get_model("resnet18", include_top=False, pooling=pooling).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model(x)
        fmap = model.forward_features(x)
    assert features.shape == (2, 512)
    expected = fmap.mean((2, 3)) if pooling == "avg" else fmap.amax((2, 3))
    torch.testing.assert_close(features, expected)


def test_forward_features_and_head_compose_to_forward():
    model = get_model("resnet34", num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 512)


@pytest.mark.parametrize("size", [(32, 32), (48, 80), (97, 65)])
def test_any_input_of_at_least_32(size):
    model = get_model("resnet18", num_classes=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 1)


def test_v1_moves_stride_to_first_1x1_and_keeps_keys():
    v15 = get_model("resnet50")
    v1 = get_model("resnet50", stride_in_1x1=True)
    assert v15.state_dict().keys() == v1.state_dict().keys()
    block15, block1 = v15.layer2[0], v1.layer2[0]
    assert (block15.conv1.stride, block15.conv2.stride) == ((1, 1), (2, 2))
    assert (block1.conv1.stride, block1.conv2.stride) == ((2, 2), (1, 1))
    v1.load_state_dict(v15.state_dict())
    x = torch.randn(1, 3, 64, 64)
    v15.eval(), v1.eval()
    with torch.no_grad():
        a, b = v15(x), v1(x)
    assert a.shape == b.shape
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("name,block", [("resnet18", BasicBlock), ("resnet50", Bottleneck)])
def test_zero_init_residual_zeroes_last_bn_of_each_block(name, block):
    model = get_model(name, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, block)]
    assert len(blocks) == sum(len(s) for s in (model.layer1, model.layer2, model.layer3, model.layer4))
    for b in blocks:
        last = b.bn2 if block is BasicBlock else b.bn3
        assert torch.count_nonzero(last.weight) == 0
        assert torch.count_nonzero(b.bn1.weight) == b.bn1.weight.numel()
    default = get_model(name)
    assert all(torch.all(b.last_bn().weight == 1) for b in default.modules() if isinstance(b, block))


def test_kaiming_fan_out_init_of_convs():
    torch.manual_seed(0)
    conv = get_model("resnet50").layer4[0].conv2  # 512 -> 512, 3x3
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)


def test_reset_classifier():
    model = get_model("resnet18", include_top=False)
    model.reset_classifier(3)
    assert model.fc.out_features == 3
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="num_classes must be a positive int"):
            model.reset_classifier(bad)
    assert model.fc.out_features == 3  # unchanged


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: get_model("resnet19"), "unknown model 'resnet19'; choose one of: resnet10, resnet18, resnet34"),
        (lambda: get_model("resnet18", num_classes=0), "num_classes must be a positive int"),
        (lambda: get_model("resnet18", pooling="mean"), "pooling must be one of"),
        (lambda: ResNet(BasicBlock, [2, 2, 2]), "layers must be four positive ints"),
        (lambda: ResNet(BasicBlock, [2, 2, 0, 2]), "layers must be four positive ints"),
        (lambda: ResNet(torch.nn.Linear, [2, 2, 2, 2]), "block must be BasicBlock or Bottleneck"),
    ],
)
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call()


def test_flip_tta_averages_an_image_and_its_mirror():
    torch.manual_seed(0)
    model = resnet18(num_classes=5).eval()
    tta = FlipTTA(model).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tta(x), (model(x) + model(x.flip(-1))) / 2)
        assert torch.allclose(tta(x), tta(x.flip(-1)), atol=1e-5)  # mirror-invariant by construction
        assert not torch.allclose(model(x), model(x.flip(-1)), atol=1e-3)  # which the model alone is not


# --- the small-image stem ----------------------------------------------------------------


def test_small_stem_keeps_32px_images_large_through_layer4():
    model = resnet18(num_classes=10, stem="small").eval()
    x = torch.randn(2, 3, 32, 32)
    shapes = {}
    for name in ("maxpool", "layer1", "layer2", "layer3", "layer4"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape))
    assert model(x).shape == (2, 10)
    assert shapes == {"maxpool": (2, 64, 32, 32), "layer1": (2, 64, 32, 32), "layer2": (2, 128, 16, 16),
                      "layer3": (2, 256, 8, 8), "layer4": (2, 512, 4, 4)}
    imagenet = resnet18(num_classes=10).eval()
    assert imagenet.forward_features(x).shape == (2, 512, 1, 1)  # why small images need another stem


def test_small_pool_stem_halves_32px_images_before_layer1():
    model = resnet18(num_classes=10, stem="small-pool").eval()
    shapes = {}
    for name in ("conv1", "layer1", "layer4"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert shapes == {"conv1": (2, 64, 32, 32), "layer1": (2, 64, 16, 16), "layer4": (2, 512, 2, 2)}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("stem", ["small", "small-pool"])
def test_small_stems_differ_from_torchvision_only_in_conv1s_shape(name, stem):
    ours = get_model(name, num_classes=10, stem=stem).state_dict()
    theirs = getattr(torchvision.models, name)(num_classes=10).state_dict()
    assert list(ours) == list(theirs)
    differing = {key for key in ours if ours[key].shape != theirs[key].shape}
    assert differing == {"conv1.weight"}
    assert ours["conv1.weight"].shape == (64, 3, 3, 3)


def test_unknown_stem_is_refused():
    with pytest.raises(ValueError, match="stem"):
        resnet18(stem="tiny")
