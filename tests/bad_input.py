"""Shared check for the bad-input tables: a command given bad input ends with one line, status 2, no traceback."""

from vtg_pipeline.cli import main


def assert_one_line_error(argv: list[str], capsys, *names: str) -> str:
    """Run ``vtg argv`` in-process; assert exit status 2 and a single stderr line naming each of ``names``.

    Progress bars (lines holding a carriage return) and warnings before the error are allowed; the error
    must be the last line, start with ``vtg <command>: error:`` and hold no traceback. Returns that line.
    """
    capsys.readouterr()
    status = main(argv)  # an unexpected exception propagates and fails the test: that is a traceback
    err = capsys.readouterr().err
    assert status == 2, f"exit status {status}, stderr: {err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and "\r" not in line]
    errors = [line for line in lines if line.startswith(f"vtg {argv[0]}: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"expected one error line last, got: {lines}"
    for name in names:
        assert str(name) in errors[0], f"{name!r} not named in: {errors[0]}"
    return errors[0]
