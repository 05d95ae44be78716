from voketag_ops.core.text import counted


def test_a_count_of_one_takes_the_singular_and_any_other_the_plural():
    assert counted(1, "row") == "1 row"
    assert [counted(n, "branch exit") for n in (0, 2, 1000)] == [
        "0 branch exits",
        "2 branch exits",
        "1,000 branch exits",
    ]
    assert counted(1, "file matches", "files match") == "1 file matches"
    assert counted(3, "file matches", "files match") == "3 files match"
