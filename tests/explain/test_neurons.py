"""Top-activating images of a concept neuron (paper appendix C, Figure 9)."""

import pytest
import timm
import torch

import salfcbm
from salfcbm.errors import ConceptNotFoundError, InputError
from salfcbm.explain import top_activating_images
from salfcbm.viz import plot_top_images


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["a", "b", "c"], num_classes=2,
                         backbone_weights=None, input_size=(32, 32), grid=4)
    data = [(torch.rand(3, 32, 32), 0) for _ in range(10)]
    return model, data


def test_top_images_are_the_highest_activations(model_and_data):
    model, data = model_and_data
    with torch.no_grad():
        acts = model(model.preprocess(torch.stack([x for x, _ in data]))).concept_activations
    tops = top_activating_images(model, data, ["b", 2], k=3, batch_size=4)
    assert [t.concept for t in tops] == ["b", "c"]
    for t in tops:
        expect = acts[:, t.index].topk(3)
        assert t.indices == expect.indices.tolist()
        assert torch.allclose(t.activations, expect.values, atol=1e-5)
        assert t.images.shape == (3, 3, 32, 32) and t.maps.shape == (3, 32, 32)
        assert torch.allclose(t.images[0], model.image_transform.view(data[t.indices[0]][0])[0])  # the model's view


def test_plot_has_one_row_per_neuron(model_and_data, tmp_path):
    model, data = model_and_data
    fig = plot_top_images(top_activating_images(model, data, ["a", "b"], k=2))
    assert len(fig.axes) == 4 and fig.axes[0].get_title().startswith("a\nc*=")
    fig.savefig(tmp_path / "neurons.png")
    assert (tmp_path / "neurons.png").stat().st_size > 0


def test_bad_arguments(model_and_data):
    model, data = model_and_data
    with pytest.raises(ConceptNotFoundError):
        top_activating_images(model, data, "zebra")
    with pytest.raises(InputError, match="k"):
        top_activating_images(model, data, "a", k=11)
    with pytest.raises(InputError, match="at least one concept"):
        top_activating_images(model, data, [])
