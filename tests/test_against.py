"""loadtest.against: this checkout's CPU per flip beside another revision's."""

import subprocess

from loadtest import against


def test_a_revision_is_measured_beside_this_checkout_and_its_worktree_removed():
    def worktrees():
        return subprocess.run(["git", "-C", str(against.ROOT), "worktree", "list"], capture_output=True, text=True,
                              check=True).stdout

    before = worktrees()
    found = against.compare("HEAD", rounds=1, cases=["GIF of 20 frames"])
    assert list(found) == ["GIF of 20 frames"]
    other, this = found["GIF of 20 frames"]
    assert 0.001 < other < 1 and 0.001 < this < 1
    assert worktrees() == before
