import gzip

import pytest

from broker.errors import TraceError
from broker.simulator.swf import read_swf
from broker.simulator.workload import from_trace

from swf_helpers import HEADER, swf_line, write_swf


def test_header_keys_and_leading_integers(small_swf):
    trace = read_swf(small_swf)
    assert trace.header["Computer"] == "test cluster"
    assert trace.header["MaxNodes"] == "8 (batch partition; 16 total)"
    assert trace.header_int("MaxNodes") == 8
    assert trace.max_procs == 8
    assert trace.unix_start == 1000000000
    assert len(trace) == 4


def test_fields_and_unknowns(small_swf):
    jobs = read_swf(small_swf).jobs
    assert jobs[0].job_id == 1 and jobs[0].avg_cpu == 12.5 and jobs[0].procs == 4
    assert jobs[1].req_time == -1 and jobs[1].used_mem == -1
    assert jobs[3].runtime == 300 and jobs[3].req_time == 100


def test_estimates_stand_in_for_unknown_or_short_requests(small_swf):
    w = from_trace("x", read_swf(small_swf))
    # requested 200 > run 100: kept; -1: the run time; 100 < run 300: the run time
    assert w.estimate == [200.0, 50.0, 60.0, 300.0]
    assert w.capacity == 8
    assert w.unix_start == 1000000000


def test_gzip_and_plain_read_the_same(tmp_path, small_swf):
    gz = tmp_path / "small.swf.gz"
    gz.write_bytes(gzip.compress(small_swf.read_bytes()))
    plain, packed = read_swf(small_swf), read_swf(gz)
    assert packed.header == plain.header
    assert (packed.data == plain.data).all()


def test_no_max_procs_falls_back_to_largest_job(tmp_path):
    path = write_swf(tmp_path / "t.swf", [swf_line(1, 0, 10, 3)], header="; Version: 2\n")
    trace = read_swf(path)
    assert trace.max_procs is None
    assert from_trace("t", trace).capacity == 3


def test_wrong_field_count_names_file_and_line(tmp_path):
    lines = [swf_line(1, 0, 10, 1), "2 5 -1 10 1 -1 -1"]
    path = write_swf(tmp_path / "bad.swf", lines)
    lineno = HEADER.count("\n") + 2
    with pytest.raises(TraceError) as info:
        read_swf(path)
    message = str(info.value)
    assert f"bad.swf:{lineno}:" in message
    assert "expected 18" in message and "found 7" in message


def test_non_number_field_names_the_field(tmp_path):
    line = swf_line(1, 0, 10, 1).replace(" 10 ", " ten ", 1)
    path = write_swf(tmp_path / "bad.swf.gz", [swf_line(2, 0, 1, 1), line])
    with pytest.raises(TraceError, match=r"bad.swf.gz:\d+: field 4 \(runtime\).*'ten'"):
        read_swf(path)


def test_job_without_processors_is_read_then_screened(tmp_path):
    path = write_swf(tmp_path / "p.swf", [swf_line(1, 0, 10, 2), swf_line(2, 0, 10, -1)])
    trace = read_swf(path)
    assert len(trace) == 2 and list(trace.lines) == [HEADER.count("\n") + 1,
                                                     HEADER.count("\n") + 2]
    assert from_trace("p", trace).left_out["no_processors"] == 1
    with pytest.raises(TraceError, match=r"p.swf:\d+: job 2 has no processor count"):
        from_trace("p", trace, strict=True)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(TraceError, match="not found"):
        read_swf(tmp_path / "absent.swf")
    broken = tmp_path / "broken.swf.gz"
    broken.write_bytes(b"\x1f\x8b" + b"junk" * 10)
    with pytest.raises(TraceError, match="cannot be read"):
        read_swf(broken)


def test_empty_trace(tmp_path):
    path = write_swf(tmp_path / "e.swf", [])
    assert len(read_swf(path)) == 0


def test_section_keeps_jobs_of_the_days(small_swf):
    w = from_trace("x", read_swf(small_swf), start_day=0, end_day=15 / 86400)
    assert len(w) == 2 and w.submit == [0.0, 10.0]


@pytest.mark.traces
def test_real_traces(traces):
    ctc = read_swf(traces / "CTC-SP2.swf.gz")
    osc = read_swf(traces / "OSC-Clust.swf.gz")
    assert (len(ctc), len(osc)) == (77222, 36097)
    assert (ctc.max_procs, osc.max_procs) == (338, 178)
    assert (ctc.largest_job, osc.largest_job) == (336, 32)
    assert ctc.header_int("MaxNodes") == 338 and osc.header_int("MaxNodes") == 57
