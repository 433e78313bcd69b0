"""Failures on one process of two, agreed by both (gloo on the CPU standing in for NCCL): nobody
is left waiting in a collective for a process that stopped."""

from ranks import run_ranks


def test_the_others_wait_for_a_slow_rank_zero_beyond_the_group_timeout_and_learn_if_it_failed(tmp_path):
    # the group times out after 10 s; rank 0 takes 12 s to "decode", then fails in a second round
    ended = run_ranks(tmp_path, [("_slow_rank_zero", (12, False)), ("_slow_rank_zero", (0.1, True))], timeout_s=10)
    assert ended[0] == ["finished", "TrainingError: cannot decode the folder"]
    assert ended[1] == ["finished", "TrainingError: rank 0 failed while preparing the data or the model; "
                                    "see its message"]


def test_a_failure_on_one_process_at_each_point_of_a_run_stops_both(tmp_path):
    points = [(0, "on_run_start"), (1, "moving the data"), (1, "caching"), (1, "training"), (0, "optimizer step"),
              (1, "evaluating")]
    ended = run_ranks(tmp_path, [("_train", p) for p in points] + [("_train", (-1, "nowhere"))], timeout_s=60)
    failing = {0: [], 1: []}
    for (rank, where), a, b in zip(points, ended[0], ended[1]):
        failing[rank].append(where)
        mine, other = (a, b) if rank == 0 else (b, a)
        assert mine.startswith("TrainingError: "), (where, mine)
        assert other.startswith("TrainingError: ") and ("another process" in other or "rank 0" in other), (where, other)
    assert ended[0][0] == "TrainingError: cannot write config.json"
    assert ended[1][0] == "TrainingError: rank 0 could not write the run's files; see its message"
    assert ended[1][1].startswith("TrainingError: out of memory while moving the data to the device")
    assert ended[0][1] == "TrainingError: another process failed while moving the data to the device; see its message"
    assert ended[1][3].startswith("TrainingError: out of memory while training")
    assert ended[0][3] == "TrainingError: another process ran out of memory while training; see its message"
    assert ended[0][-1] == ended[1][-1] == "finished"  # and the group still works afterwards
