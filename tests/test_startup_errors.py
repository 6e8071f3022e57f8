"""hieros.startup_errors: Hydra's reports before a job starts become one line; a bug's traceback stays whole."""

from __future__ import annotations

import io

from hieros.startup_errors import StartupStderr, startup_error_line

HINT = "\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n"


def test_an_options_list_and_the_search_path_become_one_line():
    text = (
        "In 'config': Could not find 'env/nope'\n\nAvailable options in 'env':\n\tatari100k\n\tgym\n"
        "Config search path:\n\tprovider=hydra, path=pkg://hydra.conf\n" + HINT
    )
    assert (
        startup_error_line(text) == "In 'config': Could not find 'env/nope'; Available options in 'env': atari100k, gym"
    )


def test_a_misspelled_key_names_the_closest_one_not_the_plus_form():
    text = "Could not override 'training.stepz'.\nTo append to your config use +training.stepz=10\n" + HINT
    line = startup_error_line(text)
    assert "did you mean training.steps?" in line and "+training.stepz" not in line
    assert "did you mean model?" in startup_error_line("Could not override 'modle'.\n" + HINT)


def test_an_os_error_traceback_is_one_line_but_a_bug_is_not_hidden():
    os_error = "Traceback (most recent call last):\n  File x\nPermissionError: [Errno 13] Permission denied: '/x'\n"
    assert "cannot create the run directory ([Errno 13] Permission denied: '/x')" in startup_error_line(os_error + HINT)
    bug = "Traceback (most recent call last):\n  File x\nKeyError: 'levels'\n"
    assert startup_error_line(bug + HINT) is None


def test_stderr_is_held_until_release_then_passes_through():
    real = io.StringIO()
    held = StartupStderr(real)
    held.write("early\n")
    assert real.getvalue() == "" and held.held() == "early\n"
    held.release()
    held.write("late\n")
    assert real.getvalue() == "early\nlate\n"
