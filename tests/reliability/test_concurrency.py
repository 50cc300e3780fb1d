"""One model, many threads: every call gets its own answer, no call sees another's hook.

A Gradio app, a FastAPI server or a thread pool calls one shared model from several threads at
once. Each test computes the single-threaded answer for every input first, then makes the same
calls from many threads and compares. The calls are many and small so that the threads overlap
inside the backbone's forward (torch releases the GIL in every kernel).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import timm
import torch
from torch import nn

import salfcbm
from salfcbm.core.tap import FeatureTap, probe_layers

CONCEPTS = ["a wing", "a beak", "water", "a tree"]
THREADS = 8
CALLS = 200


def _hooks_left(module: nn.Module) -> list[str]:
    dicts = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
    return [f"{n or '<root>'}.{d}" for n, m in module.named_modules() for d in dicts if getattr(m, d, None)]


def _randomise(model: salfcbm.SALFCBM, seed: int) -> salfcbm.SALFCBM:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (model.bottleneck.weight, model.head.weight, model.head.bias):
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=3)


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_vit", img_size=32, patch_size=8, depth=2, num_classes=3)


BACKBONES = {"timm-cnn": (_cnn, 32), "timm-vit": (_vit, 32)}


def _inputs(size: int, n: int = CALLS) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(size)
    return [torch.randn(1 + i % 3, 3, size, size, generator=g) for i in range(n)]


def _run_threads(fn, items, threads: int = THREADS) -> list:
    """``fn(item)`` for every item from ``threads`` threads started together; errors are returned, not raised."""
    start = threading.Barrier(threads)

    def call(i_item):
        i, item = i_item
        if i < threads:
            start.wait()
        try:
            return fn(item)
        except Exception as e:  # noqa: BLE001 - collected and reported by the test
            return e

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(call, enumerate(items)))


def _check(results, refs, compare) -> None:
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, f"{len(errors)} of {len(results)} calls raised, e.g. {errors[0]!r}"
    wrong = [i for i, (r, ref) in enumerate(zip(results, refs)) if not compare(r, ref)]
    assert not wrong, f"{len(wrong)} of {len(results)} calls got another answer than alone, e.g. call {wrong[0]}"


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("key", list(BACKBONES))
def test_threads_get_their_own_logits_and_concept_maps(key):
    build, size = BACKBONES[key]
    net = build()
    model = _randomise(salfcbm.wrap(net, concepts=CONCEPTS, num_classes=3, grid=3, input_size=(size, size),
                                    backbone_weights=None), 1).eval()
    xs = _inputs(size)

    def predict(x):
        with torch.no_grad():
            out = model(x)
            return out.logits, out.concept_maps

    refs = [predict(x) for x in xs]
    results = _run_threads(predict, xs)
    _check(results, refs, lambda r, ref: _same(r[0], ref[0]) and _same(r[1], ref[1]))
    assert _hooks_left(net) == []


def test_threads_explain_concurrently():
    model = _randomise(salfcbm.wrap(_vit(), concepts=CONCEPTS, num_classes=3, grid=3, input_size=(32, 32),
                                    backbone_weights=None), 2).eval()
    xs = _inputs(32, 96)

    def explain(x):
        e = model.explain(x, top_k=2)
        return [(e[i].prediction, list(e[i].concepts), e[i].logits, e[i].heatmaps) for i in range(len(e))]

    def same(r, ref):
        return len(r) == len(ref) and all(a[:2] == b[:2] and _same(a[2], b[2]) and _same(a[3], b[3])
                                          for a, b in zip(r, ref))

    refs = [explain(x) for x in xs]
    _check(_run_threads(explain, xs), refs, same)
    assert _hooks_left(model.backbone) == []


def test_two_models_sharing_one_backbone_and_layer():
    """Two wrappers (other concepts, same backbone and layer) served at once keep their own answers."""
    net = _cnn().eval()
    a = _randomise(salfcbm.wrap(net, concepts=CONCEPTS, num_classes=3, grid=3, input_size=(32, 32),
                                backbone_weights=None), 3)
    b = _randomise(salfcbm.wrap(net, concepts=CONCEPTS[:2], num_classes=3, grid=2, layer=a.layer,
                                input_size=(32, 32), backbone_weights=None), 4)
    xs = _inputs(32)
    jobs = [((a, b)[i % 2], x) for i, x in enumerate(xs)]

    def predict(job):
        m, x = job
        with torch.no_grad():
            return m(x).logits

    refs = [predict(j) for j in jobs]
    _check(_run_threads(predict, jobs), refs, _same)
    assert _hooks_left(net) == []


def test_tap_without_stop_early_and_nested_calls():
    """A tap that lets the forward run on, and a tap called from inside the backbone's own forward
    (re-entrant use in one thread), each capture their own input's map."""
    net = _cnn().eval()
    tap = FeatureTap(net, stop_early=False, input_size=(32, 32))
    xs = _inputs(32, 120)
    with torch.no_grad():
        refs = [tap(x) for x in xs]
        _check(_run_threads(lambda x: tap(x), xs), refs, _same)

        inner: list = []

        def reenter(_m, _i, _o):
            if not inner:  # once: the nested call runs this hook again
                inner.append(None)
                inner[0] = tap(xs[1])

        handle = net.conv1.register_forward_hook(reenter)  # runs before the tapped stage
        try:
            outer = tap(xs[0])
        finally:
            handle.remove()
    assert _same(outer, refs[0]) and _same(inner[0], refs[1])
    assert _hooks_left(net) == []


def test_calls_that_raise_do_not_disturb_the_others_or_leave_a_hook():
    """Every third call raises inside the backbone (a 2-channel image); the others still get their
    own answers, and the hook is gone once all calls end."""
    net = _cnn().eval()
    model = _randomise(salfcbm.wrap(net, concepts=CONCEPTS, num_classes=3, grid=3, input_size=(32, 32),
                                    backbone_weights=None), 8).eval()
    xs = [x[:, :2] if i % 3 == 2 else x for i, x in enumerate(_inputs(32))]

    def predict(x):
        try:
            with torch.no_grad():
                return model(x).logits
        except RuntimeError as e:  # the backbone's own error for a 2-channel image
            return type(e)

    refs = [predict(x) for x in xs]
    assert sum(r is RuntimeError for r in refs) == len(xs) // 3
    results = _run_threads(predict, xs)
    _check(results, refs, lambda r, ref: r is ref if isinstance(ref, type) else _same(r, ref))
    assert _hooks_left(net) == []


def test_probing_a_backbone_that_another_thread_is_running():
    """Wrapping (probing) a backbone while another thread runs it on other images describes the
    probe's own forward pass only."""
    net = _cnn().eval()
    quiet = [(i.name, i.shape, i.layout, i.grid) for i in probe_layers(net, (32, 32))]
    stop = threading.Event()

    def serve():
        with torch.no_grad():
            while not stop.is_set():
                net(torch.randn(3, 3, 64, 64))

    server = threading.Thread(target=serve)
    server.start()
    try:
        busy = [[(i.name, i.shape, i.layout, i.grid) for i in probe_layers(net, (32, 32))] for _ in range(20)]
    finally:
        stop.set()
        server.join()
    assert all(b == quiet for b in busy), "a probe recorded another thread's forward pass"
    assert _hooks_left(net) == []


def test_frozen_backbone_left_in_train_mode_is_served_and_handed_back():
    """The user's backbone stays in train mode (wrap never calls .eval() on it); a frozen model still
    runs it in eval mode for every call, whatever the other threads do, and hands back train mode."""
    net = _cnn()  # train mode, as timm creates it
    model = _randomise(salfcbm.wrap(net, concepts=CONCEPTS, num_classes=3, grid=3, input_size=(32, 32),
                                    backbone_weights=None), 5)
    model.bottleneck.eval(), model.head.eval()
    stats = {k: v.clone() for k, v in net.state_dict().items()}
    xs = _inputs(32)

    def predict(x):
        with torch.no_grad():
            return model(x).logits

    refs = [predict(x) for x in xs]
    _check(_run_threads(predict, xs), refs, _same)
    assert all(m.training for m in net.modules()), "the backbone's own train mode was not handed back"
    assert all(torch.equal(stats[k], v) for k, v in net.state_dict().items()), "BatchNorm statistics changed"
    assert _hooks_left(net) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_threads_on_cuda_streams():
    dev = torch.device("cuda")
    model = _randomise(salfcbm.wrap(_vit(), concepts=CONCEPTS, num_classes=3, grid=3, input_size=(32, 32),
                                    backbone_weights=None), 6).eval().to(dev)
    xs = [x.to(dev) for x in _inputs(32)]
    streams = [torch.cuda.Stream() for _ in range(THREADS)]
    slot = threading.local()
    counter = iter(range(10**6))
    lock = threading.Lock()

    def predict(x):
        if not hasattr(slot, "stream"):
            with lock:
                slot.stream = streams[next(counter) % THREADS]
        with torch.no_grad(), torch.cuda.stream(slot.stream):
            slot.stream.wait_stream(torch.cuda.default_stream())
            out = model(x)
            logits, maps = out.logits.cpu(), out.concept_maps.cpu()  # .cpu() syncs this stream
        return logits, maps

    with torch.no_grad():
        refs = [(o.logits.cpu(), o.concept_maps.cpu()) for o in (model(x) for x in xs)]
    _check(_run_threads(predict, xs), refs, lambda r, ref: _same(r[0], ref[0]) and _same(r[1], ref[1]))
    assert _hooks_left(model.backbone) == []


def test_compiled_model_from_threads():
    """A torch.compile'd model (its tap traced into the graph) called from many threads gives every
    call its own answer and leaves no hook behind."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))
    model = _randomise(salfcbm.wrap(net, concepts=CONCEPTS, num_classes=3, grid=3, layer="2", input_size=(32, 32),
                                    backbone_weights=None), 7).eval()
    compiled = torch.compile(model, backend="eager", dynamic=False)
    xs = [x[:1] for x in _inputs(32, 200)]

    def predict(x):
        with torch.no_grad():
            return compiled(x).logits

    with torch.no_grad():
        refs = [model(x).logits for x in xs]
        compiled(xs[0])  # compile once, before the threads
    _check(_run_threads(predict, xs), refs, _same)
    assert _hooks_left(net) == []
