"""The published real-device latencies the latency model is fitted on: the packaged
tables and the reader's errors on bad rows (pure CSV parsing; no TensorFlow, no qemu)."""

import pytest

from pipeline.devices.profiles import DEVICES
from pipeline.errors import ConfigError
from pipeline.latency import published as pub


def test_packaged_published_table_parses_with_registered_devices_and_models():
    from pipeline.train.zoo import family_names

    points = pub.load_published()
    assert len(points) == 14 and len({p.name for p in points}) == 14
    assert all(p.device in DEVICES.names() and p.model in family_names() for p in points)
    assert {p.runtime for p in points} <= set(pub.PUBLISHED_RUNTIMES)
    assert {p.model for p in points} == set(pub.PUBLISHED_ORDER)
    assert all(p.threads == 1 and p.latency_ms > 0 and p.source for p in points)


def test_published_multi_thread_points_have_single_thread_partners():
    multi = pub.load_multi_thread()
    single = {(p.model, p.device): p.latency_ms for p in pub.load_published() if p.variant == "float32"}
    assert len(multi) == 12 and set(multi) <= set(single)
    # Every multi-thread latency is faster than its single-thread partner.
    assert all(ms < single[key] for key, ms in multi.items())


@pytest.mark.parametrize("row, message", [
    ("mobilenet_v1,float16,pixel2,1,80,xnnpack-2020,x", "variant 'float16'; valid: float32, int8_qat"),
    ("mobilenet_v1,float32,pixel2,4,30,xnnpack-2020,x", "threads 4: the cost model is fitted on "
                                                        "single-thread latencies only"),
    ("mobilenet_v1,float32,pixel2,1,80,ncnn,x", "runtime 'ncnn'; valid: xnnpack-2020, tflite-2019"),
    ("mobilenet_v1,float32,pixel2,1,abc,xnnpack-2020,x", "threads and latency_ms must be numbers"),
    ("mobilenet_v1,float32,iphone,1,80,xnnpack-2020,x", "unknown device 'iphone'"),
])
def test_load_published_rejects_bad_rows(tmp_path, row, message):
    path = tmp_path / "p.csv"
    path.write_text("model,variant,device,threads,latency_ms,runtime,source\n" + row + "\n")
    with pytest.raises(ConfigError) as e:
        pub.load_published(path)
    assert message in str(e.value)


def test_load_published_needs_the_header(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("mobilenet_v1,float32,pixel2,1,86,xnnpack-2020,x\n")
    with pytest.raises(ConfigError, match="expected the header model,variant,device,threads,"
                                          "latency_ms,runtime,source, got 'mobilenet_v1,"):
        pub.load_published(path)


def test_load_published_reads_a_commented_header(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("# a comment\n# model,variant,device,threads,latency_ms,runtime,source\n"
                    "mobilenet_v1,float32,pixel2,1,86,xnnpack-2020,x\n")
    assert [p.name for p in pub.load_published(path)] == ["mobilenet_v1 float32 pixel2"]


@pytest.mark.parametrize("row, message", [
    ("mobilenet_v1,iphone,40", "unknown device 'iphone'"),
    ("resnet,pixel2,40", "unknown model family 'resnet'"),
    ("mobilenet_v1,pixel2,0", "latency_ms must be > 0, got 0"),
    ("mobilenet_v1,pixel2,fast", "latency_ms must be a number, got 'fast'"),
])
def test_load_multi_thread_rejects_bad_rows(tmp_path, row, message):
    path = tmp_path / "m.csv"
    path.write_text("model,device,latency_ms\n" + row + "\n")
    with pytest.raises(ConfigError) as e:
        pub.load_multi_thread(path)
    assert message in str(e.value) and "row 1" in str(e.value)
