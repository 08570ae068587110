"""The fault drill's checks on job outputs and its recovery figures (plain objects)."""

from __future__ import annotations

from broker.lab.faultcheck import Observation, figures, job_problems, parse_output


def lines(*entries: tuple[str, str, float]) -> bytes:
    return "".join(f"{w} {h} {t:.3f}\n" for w, h, t in entries).encode()


def test_a_job_requeued_after_its_first_run_stopped_is_fine() -> None:
    raw = lines(("start", "a-v1", 100), ("tick", "a-v1", 101), ("tick", "a-v1", 102),
                ("start", "a-node1", 140), ("tick", "a-node1", 141), ("done", "a-node1", 142))
    job = parse_output("7", raw)
    assert job.finished_on == "a-node1"
    assert job_problems(job) == []


def test_two_hosts_running_one_job_at_once_is_named_with_the_overlap() -> None:
    raw = lines(("start", "a-v1", 100), ("start", "a-node1", 140), ("tick", "a-v1", 150),
                ("tick", "a-node1", 151), ("done", "a-node1", 160))
    problems = job_problems(parse_output("7", raw))
    assert problems == ["job 7: ran on a-v1 and a-node1 at once for 10.0 s"]


def test_nul_bytes_and_broken_lines_are_corruption() -> None:
    raw = lines(("start", "a-node1", 140)) + b"\x00\x00\x00\x00" + b"tick a-no\n" + \
        lines(("done", "a-node1", 142))
    problems = job_problems(parse_output("9", raw))
    assert "job 9: output corrupted (4 NUL byte(s))" in problems
    assert any("line 2" in p and "tick a-no" in p for p in problems)


def test_a_job_no_host_finished_is_lost() -> None:
    assert job_problems(parse_output("3", lines(("start", "a-v1", 1), ("tick", "a-v1", 2)))) == [
        "job 3: lost (no run finished; runs on a-v1)"]
    assert job_problems(parse_output("4", b"")) == ["job 4: lost (no run finished; runs on nothing)"]


def test_figures_count_from_the_fault_to_when_each_part_stayed_done() -> None:
    def obs(at, b_open, l_open, node, host, job):
        return Observation(at, b_open, l_open, node, host, job)

    seen = [obs(10, True, True, True, False, False),
            obs(20, False, True, True, False, False),
            obs(30, False, False, False, None, False),  # the lender's host could not be asked
            obs(35, False, True, False, False, False),  # a flap: the lender reopened? not settled
            obs(40, False, False, False, True, True),
            obs(50, False, False, False, True, True)]
    f = figures(5.0, seen)
    assert f == {"contracts_ended_s": 35.0, "node_gone_s": 25.0, "host_back_s": 35.0,
                 "job_elsewhere_s": 35.0}


def test_a_part_never_done_has_no_figure() -> None:
    f = figures(0.0, [Observation(1, True, None, True, None, None)])
    assert f == {"contracts_ended_s": None, "node_gone_s": None, "host_back_s": None,
                 "job_elsewhere_s": None}


def test_slurms_own_requeue_notice_in_the_output_is_not_corruption() -> None:
    raw = lines(("start", "a-v1", 100), ("tick", "a-v1", 101)) + (
        b"slurmstepd-a-v1: error: *** JOB 68 ON a-v1 CANCELLED AT 2026-11-30T08:26:40 DUE TO "
        b"NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS ***\n") + \
        lines(("start", "a-node1", 140), ("done", "a-node1", 170))
    job = parse_output("68", raw)
    assert job_problems(job) == [] and len(job.notes) == 1


def test_the_shells_report_of_a_signalled_job_is_not_corruption_but_half_a_line_is() -> None:
    # the scheduler requeued the job while the VM still ran: its shell reports the killed sleep
    raw = lines(("start", "a-v1", 100), ("tick", "a-v1", 101)) + b"Terminated\n" + \
        lines(("start", "a-node1", 140), ("done", "a-node1", 170))
    job = parse_output("59", raw)
    assert job_problems(job) == [] and job.notes == ["Terminated"]
    broken = parse_output("60", raw.replace(b"Terminated\n", b"Terminated tick a-v1 10\n"))
    assert job_problems(broken) == ["job 60: output corrupted (line 3: 'Terminated tick a-v1 10')"]
