"""Once-for-all supernet: the search space is validated, elastic kernels follow the paper, and every extracted
subnet is a plain module with the supernet's outputs and the MACs counted in its exported graph."""

from __future__ import annotations

import pytest
import torch

from edgeopt.nn import ofa

CFG = ofa.OFAConfig(depths=(1, 2), kernel_sizes=(3, 5, 7), expand_ratios=(2, 3), resolutions=(16, 24),
                    widths=(8, 16), strides=(1, 2), stem_width=8, head_width=16)


def _net(seed: int = 0):
    torch.manual_seed(seed)
    net = ofa.OFANet(CFG)
    with torch.no_grad():  # non-trivial BatchNorm statistics and kernel transforms, so slicing errors show
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, ofa.ElasticKernelConv):
                for t in m.transforms.values():
                    t.add_(0.05 * torch.randn_like(t))
    return net.eval()


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="field 'kernel_sizes'.*odd"):
        ofa.OFAConfig(kernel_sizes=(3, 4))
    with pytest.raises(ValueError, match="field 'resolutions'"):
        ofa.OFAConfig(resolutions=(4, 32))
    with pytest.raises(ValueError, match="fields 'widths' and 'strides'"):
        ofa.OFAConfig(widths=(8, 16), strides=(1,))
    ex = ofa.OFASubNetworkExtractor(_net())
    sub = ex.sample_largest().to_dict()
    with pytest.raises(ValueError, match="field 'k'"):
        ex.set_config({**sub, "k": [9] * len(sub["k"])})  # a kernel larger than the supernet's
    with pytest.raises(ValueError, match="field 'r'"):
        ex.set_config({**sub, "r": 20})
    with pytest.raises(ValueError, match="field 'd'"):
        ex.set_config({**sub, "d": [3, 1]})


def test_smaller_kernels_are_transformed_centre_crops():
    conv = ofa.ElasticKernelConv(4, (3, 5, 7))
    w = conv.weight.detach()
    torch.testing.assert_close(conv.kernel(3).detach(), w[:, :, 2:5, 2:5])  # identity transforms: the centre
    with torch.no_grad():
        conv.transforms["5to3"].copy_(2 * torch.eye(9))
    torch.testing.assert_close(conv.kernel(3).detach(), 2 * w[:, :, 2:5, 2:5])
    assert conv.kernel(7) is conv.weight and conv.kernel(5).shape == (4, 1, 5, 5)


@pytest.mark.parametrize("which", ["largest", "smallest", "random0", "random1", "random2"])
def test_extracted_subnet_is_dense_and_matches_the_supernet(which):
    net = _net()
    ex = ofa.OFASubNetworkExtractor(net)
    sub = {"largest": ex.sample_largest, "smallest": ex.sample_smallest}.get(
        which, lambda: ex.sample_random(seed=int(which[-1])))()
    ex.set_config(sub)
    dense = ex.extract(sub)
    x = torch.randn(3, 1, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), net(x), atol=1e-5, rtol=1e-4)
    kinds = {type(m).__name__ for m in dense.modules()}
    assert not kinds & {"ElasticKernelConv", "ElasticInvertedResidual", "OFANet"}
    assert len(dense.blocks) == sum(sub.d)
    ks = [b.dw.kernel_size[0] for b in dense.blocks]
    assert ks == [k for (blk, k, e) in net.active_blocks(sub)]


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_complexity_matches_the_exported_graph_and_orders_subnets(tmp_path, stem_stride):
    import dataclasses

    import onnx

    from edgeopt.analyze.flops import count_flops, prepare

    torch.manual_seed(0)
    net = ofa.OFANet(dataclasses.replace(CFG, stem_stride=stem_stride)).eval()
    ex = ofa.OFASubNetworkExtractor(net)
    small, large, mid = ex.sample_smallest(), ex.sample_largest(), ex.sample_random(seed=3)
    cost = {n: ex.get_complexity(s) for n, s in (("small", small), ("large", large), ("mid", mid))}
    assert cost["small"]["macs"] < cost["mid"]["macs"] < cost["large"]["macs"] or \
        cost["small"]["macs"] < cost["large"]["macs"]
    for name, sub in (("small", small), ("mid", mid)):
        dense = ex.extract(sub)
        path = tmp_path / f"{name}.onnx"
        x = torch.randn(1, 1, sub.r, sub.r)
        torch.onnx.export(dense, (x,), str(path), input_names=["image"], opset_version=17, dynamo=False)
        m = onnx.load(str(path))
        assert {n.op_type for n in m.graph.node} <= {"Conv", "Relu", "HardSwish", "Add", "GlobalAveragePool",
                                                     "Flatten", "Gemm", "Reshape", "Shape", "Constant", "Gather",
                                                     "Unsqueeze", "Concat", "Identity"}
        p = prepare(m)
        macs = sum(n["macs"] for n in count_flops(p["model"], p["shapes"])["nodes"] if n["op_type"] in ("Conv", "Gemm"))
        assert macs == cost[name]["macs"]
        assert sum(t.numel() for t in dense.parameters()) == cost[name]["params"]


def test_channel_sorting_keeps_the_function_and_puts_important_channels_first():
    net = _net()
    x = torch.randn(2, 1, 24, 24)
    with torch.no_grad():
        before = net(x)
        net.sort_channels()
        torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-4)
    blk = net.stages[0][0]
    norms = blk.project.weight.abs().sum(dim=(0, 2, 3))
    assert bool((norms[:-1] >= norms[1:]).all())


def test_progressive_shrinking_schedule():
    phases = ofa.create_progressive_shrinking_schedule(CFG, 20)
    assert [p.name for p in phases] == ["full", "elastic_kernel", "elastic_depth_1", "elastic_width_1"]
    assert phases[0].kernel_sizes == (7,) and not phases[0].distill and all(p.distill for p in phases[1:])
    assert phases[-1].expand_ratios == (2.0, 3.0) and phases[-1].depths == (1, 2)
    assert all(p.epochs >= 1 for p in phases)
    full = ofa.create_progressive_shrinking_schedule(ofa.OFAConfig(), 40)
    assert [p.name for p in full][-1] == "elastic_width_2" and len(full) == 6
    with pytest.raises(ValueError, match="total_epochs"):
        ofa.create_progressive_shrinking_schedule(CFG, 0)


def _digits_like(n: int = 256, seed: int = 0):
    """A learnable 4-class problem on 16×16 images: which quadrant is bright."""
    from edgeopt.train import TensorData

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 16, 16, generator=g)
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] += 1.0
    return TensorData((x,), y)


def test_progressive_shrinking_trains_every_subnet_and_resumes(tmp_path):
    cfg = ofa.OFAConfig(depths=(1, 2), kernel_sizes=(3, 5), expand_ratios=(2, 3), resolutions=(12, 16),
                        widths=(8, 16), strides=(1, 2), stem_width=8, head_width=16, num_classes=4)
    torch.manual_seed(0)
    net = ofa.OFANet(cfg)
    data, val = _digits_like(256, 0), _digits_like(128, 1)
    ex = ofa.OFASubNetworkExtractor(net)
    small = ex.sample_smallest()
    before = ofa.evaluate_subnet(net, small, val, calibration=data)
    schedule = ofa.create_progressive_shrinking_schedule(cfg, 8)
    done = ofa.train_progressive(net, data, schedule, lr=1e-2, batch_size=32, checkpoint=tmp_path / "ckpt",
                                 progress=False)
    assert [d["name"] for d in done] == [p.name for p in schedule]
    accs = {n: ofa.evaluate_subnet(net, s, val, calibration=data)
            for n, s in (("small", small), ("large", ex.sample_largest()), ("mid", ex.sample_random(seed=1)))}
    assert min(accs.values()) >= 0.9 > before + 0.2, (before, accs)  # every subnet learned, not only the largest
    # a second call with the same schedule finds every phase done and trains nothing
    again = ofa.OFANet(cfg)
    redone = ofa.train_progressive(again, data, schedule, checkpoint=tmp_path / "ckpt", progress=False)
    assert redone == done
    x = val.inputs[0][:4]
    ofa.calibrate_bn(net, small, data)
    ofa.calibrate_bn(again, small, data)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x))


def test_accuracy_predictor_and_search_under_a_budget():
    import random

    ex = ofa.OFASubNetworkExtractor(_net())
    subs = [ex.sample_random(seed=i) for i in range(60)]
    # a synthetic "accuracy": more MACs help, with diminishing returns; the predictor must rank it
    macs = [ex.get_complexity(s)["macs"] for s in subs]
    acc = [0.5 + 0.4 * (m / max(macs)) ** 0.5 + random.Random(i).uniform(-0.005, 0.005) for i, m in enumerate(macs)]
    pred = ofa.AccuracyPredictor(CFG).fit(subs[:40], acc[:40])
    assert pred.score(subs[40:], acc[40:])["spearman"] > 0.8
    budget = sorted(macs)[len(macs) // 2]
    cost = lambda s: ex.get_complexity(s)["macs"]  # noqa: E731
    res = ofa.search_subnet(CFG, lambda s: pred.predict([s])[0], cost, budget, trials=80, seed=0)
    assert res["feasible"] and res["cost"] <= budget and res["trials"] == 80
    assert res["fitness"] >= max(pred.predict([s])[0] for s, m in zip(subs, macs) if m <= budget) - 0.02
    with pytest.raises(ValueError, match="3 or more"):
        ofa.AccuracyPredictor(CFG).fit(subs[:2], acc[:2])


def test_elastic_width_uses_the_first_channels_of_one_weight():
    torch.manual_seed(0)
    conv = ofa.ElasticWidth(8, 16)
    assert isinstance(conv, torch.nn.Conv2d) and conv.active_out == 16 and set(conv.state_dict()) == {"weight"}
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, conv.weight))
    conv.active_out = 6
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, conv.weight[:6]))
    narrow = x[:, :3]  # fewer input channels: the weight's first input channels serve them
    torch.testing.assert_close(conv(narrow), torch.nn.functional.conv2d(narrow, conv.weight[:6, :3]))


def test_elastic_depth_runs_the_first_blocks_and_the_supernet_sets_it():
    torch.manual_seed(0)
    stage = ofa.ElasticDepth([torch.nn.Linear(4, 4) for _ in range(3)])
    x = torch.randn(2, 4)
    assert stage.active_depth == 3
    stage.active_depth = 2
    torch.testing.assert_close(stage(x), stage[1](stage[0](x)))
    net = _net()
    assert all(isinstance(s, ofa.ElasticDepth) for s in net.stages)
    assert ofa.ElasticBlock is ofa.ElasticInvertedResidual and ofa.ElasticKernel is ofa.ElasticKernelConv
    sub = ofa.OFASubNetworkExtractor(net).sample_random(seed=3)
    net.set_active(sub)
    assert [s.active_depth for s in net.stages] == list(sub.d)
    blk = net.stages[0][0]
    assert isinstance(blk.expand, ofa.ElasticWidth) and blk.expand.active_out == blk.hidden(sub.e[0])
    # the parameter names are those of a plain inverted residual (checkpoints of earlier runs load)
    assert {"stages.0.0.expand.weight", "stages.0.0.project.weight", "stages.1.1.dw.weight"} <= set(net.state_dict())
