"""The noise stream: bit for bit the old per-batch randn at batch 1000, the same at every batch size, Gaussian."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from abcrown_plugins.smoothing import NOISE_CHUNK, certify, decide, noise_batches, noise_chunks, sample_counts
from abcrown_plugins.smoothing.certify import class_counts

SIGMA = 0.25


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _old_noise_batches(x, num, sigma, batch_size, generator):
    """The noise formula before the noise stream (one ``randn`` per forward batch), kept as the reference."""
    remaining = num
    while remaining > 0:
        b = min(batch_size, remaining)
        noise = torch.randn((b, *x.shape), generator=generator, device=generator.device, dtype=x.dtype)
        yield x.unsqueeze(0) + noise.to(x.device) * sigma
        remaining -= b


def _old_certify(forward, x, n0, n, alpha, sigma, num_classes, batch_size, generator):
    def counts(num):
        c = torch.zeros(num_classes, dtype=torch.int64)
        for batch in _old_noise_batches(x, num, sigma, batch_size, generator):
            c += class_counts(forward(batch), num_classes)
        return c

    selection = counts(n0)
    return decide(selection, counts(n), n0, n, alpha, sigma, 0.0)


def _net() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 6 * 6, 4)).eval()


def _key(r):
    return r.prediction, r.radius, r.pA_lower, r.counts


def test_normal_into_a_reused_buffer_is_randn_and_the_in_place_formula_is_the_old_one():
    x = torch.rand(3, 8, 8, generator=_gen(0))
    for size in (1, 7, 15, 16, 17, 1000):
        buf = torch.empty((NOISE_CHUNK, 3, 8, 8))
        view = buf[:size]
        view.normal_(generator=_gen(size))
        ref = torch.randn((size, 3, 8, 8), generator=_gen(size))
        assert torch.equal(view, ref)
        assert torch.equal(view.clone().mul_(SIGMA).add_(x), x.unsqueeze(0) + ref * SIGMA)
        out = torch.empty((size, 3, 8, 8), memory_format=torch.channels_last)
        torch.mul(view, SIGMA, out=out)
        assert torch.equal(out.add_(x), x.unsqueeze(0) + ref * SIGMA)


def test_noise_stream_is_the_old_noise_at_batch_1000_and_the_same_at_every_batch_size():
    x = torch.rand(3, 6, 6, generator=_gen(1))
    num = 2 * NOISE_CHUNK + 345
    old = torch.cat(list(_old_noise_batches(x, num, SIGMA, NOISE_CHUNK, _gen(2))))
    for b in (1, 7, 250, 1000, 1500, 5000):
        for reuse in (False, True):
            got = torch.cat([t.clone() for t in noise_batches(x, num, SIGMA, b, _gen(2), reuse=reuse)])
            assert torch.equal(got, old), (b, reuse)
    last = list(noise_batches(x, num, SIGMA, 1500, _gen(2), memory_format=torch.channels_last))
    assert [t.shape[0] for t in last] == [1500, 845]
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in last)
    assert torch.equal(torch.cat(last), old)
    # separate tensors without reuse; one buffer with it
    fresh = list(noise_batches(x, 30, SIGMA, 10, _gen(2)))
    assert len({t.data_ptr() for t in fresh}) == 3
    assert len({t.data_ptr() for t in noise_batches(x, 30, SIGMA, 10, _gen(2), reuse=True)}) == 1


def test_generator_is_left_in_the_same_state_whatever_the_batch_size():
    x = torch.rand(3, 4, 4, generator=_gen(1))
    states = []
    for b in (1, 7, 1000, 1500):
        g = _gen(4)
        for _ in noise_batches(x, 1234, SIGMA, b, g, reuse=True):
            pass
        states.append(g.get_state())
    assert all(torch.equal(states[0], s) for s in states[1:])
    g = _gen(4)
    for _ in _old_noise_batches(x, 1234, SIGMA, NOISE_CHUNK, g):
        pass
    assert torch.equal(states[0], g.get_state())


def test_certificates_equal_the_old_code_at_batch_1000_and_do_not_depend_on_the_batch_size():
    net = _net()
    for seed in (0, 1):
        x = torch.rand(3, 6, 6, generator=_gen(10 + seed))
        args = (net, x, 100, 2100, 0.001, SIGMA, 4)
        old = _old_certify(*args, NOISE_CHUNK, _gen(seed))
        with torch.no_grad():
            for b in (1, 7, 250, 1000, 1500):
                assert _key(certify(*args, b, _gen(seed))) == _key(old), (seed, b)
            cl = net.to(memory_format=torch.channels_last)
            got = certify(cl, *args[1:], 250, _gen(seed), memory_format=torch.channels_last)
            net.to(memory_format=torch.contiguous_format)
        assert got.counts == old.counts


def test_sample_counts_reuses_one_input_buffer():
    x = torch.rand(3, 4, 4, generator=_gen(1))
    ptrs = set()

    def forward(batch):
        ptrs.add(batch.data_ptr())
        return torch.zeros(batch.shape[0], 2)

    sample_counts(forward, x, 2500, SIGMA, 2, 300, _gen(3))
    assert len(ptrs) == 1


def test_noise_stream_is_standard_normal():
    """Kolmogorov-Smirnov against N(0,1) on 3 x 100k draws (crossing chunk boundaries), mean, variance,
    and no correlation between consecutive chunks (a generator reset per chunk would repeat them)."""
    chunks = [c.clone() for c in noise_chunks((1, 10, 10), 3000, _gen(7))]
    z = torch.cat(chunks).double().flatten()
    assert z.numel() == 300_000
    for part in z.view(3, -1):
        assert stats.kstest(part.numpy(), "norm").pvalue > 1e-3
    assert abs(float(z.mean())) < 5 / 300_000 ** 0.5
    assert float(z.var()) == pytest.approx(1.0, abs=0.01)
    a, b = chunks[0].flatten().double(), chunks[1].flatten().double()
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.02
    assert not torch.equal(chunks[0], chunks[1])
    # a wrong generator is caught: uniform noise, or a scaled normal
    assert stats.kstest(torch.rand(100_000, generator=_gen(1)).numpy() * 2 - 1, "norm").pvalue < 1e-3
    assert stats.kstest(1.05 * z[:100_000].numpy(), "norm").pvalue < 1e-3


@pytest.mark.parametrize("arch", ["cnn_7layer", "resnet18_nr"])
def test_channels_last_certifies_the_same_counts_as_nchw_on_fixed_seeds(arch, tmp_path):
    from abcrown_plugins.models import build
    from abcrown_plugins.smoothing.run import SmoothingSettings, certify_layout, inference_form
    from tests.conftest import randomize_batchnorm

    torch.manual_seed(0)
    net = build(arch, 3, 32, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()
    randomize_batchnorm(net)
    last = inference_form(net)  # channels-last, conv+BatchNorm folded, in-place ReLUs
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in last.modules())
    assert any(isinstance(m, torch.nn.ReLU) and m.inplace for m in last.modules())
    assert not any(isinstance(m, torch.nn.ReLU) and m.inplace for m in net.modules())  # the original is untouched
    with torch.no_grad():
        probe = torch.rand(8, 3, 32, 32)
        assert torch.allclose(last(probe), net(probe), rtol=1e-4, atol=1e-5)
        for seed in (0, 1):
            x = torch.rand(3, 32, 32, generator=_gen(20 + seed))
            args = (x, 50, 1000, 0.001, SIGMA, 10, 250)
            dense = certify(net, *args, _gen(seed))
            assert _key(certify(last, *args, _gen(seed))) == _key(dense)
            assert _key(certify(last, *args, _gen(seed), memory_format=torch.channels_last)) == _key(dense)
    settings = SmoothingSettings(sigma=SIGMA, n0=10, n=100, alpha=0.01, batch_size=20)
    assert certify_layout(net, x, settings, cache_dir=tmp_path, reps=1) in ("nchw", "channels_last")
    assert certify_layout(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)), x,
                          settings, cache_dir=tmp_path) == "nchw"


def test_the_inference_form_leaves_a_relu_in_place_only_where_nothing_else_reads_its_input():
    from abcrown_plugins.smoothing.run import inference_form

    class Reuse(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.head = torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.ReLU()

        def forward(self, x):
            y = self.conv(x)
            return self.relu(y) + y, self.head(self.conv(x) * 2)

    net = Reuse().eval()
    form = inference_form(net)
    assert not form.relu.inplace and form.head.inplace
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        for a, b in zip(form(x), net(x)):
            assert torch.allclose(a, b, atol=1e-6)
