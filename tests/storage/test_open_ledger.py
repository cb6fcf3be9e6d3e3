"""`open_ledger`: a storage folder or ledger file in, the right ledger out, or one line."""

from __future__ import annotations

import pytest

from llm_evo.errors import ConfigError
from llm_evo.storage import PoolLedger, RunStorage, held_ledgers, is_pool_storage, open_ledger


def make(tmp_path, *kinds):
    for kind in kinds:
        ledger = kind(tmp_path)
        if kind is RunStorage:
            ledger.create_run("{}", "h", 1, {})
        else:
            ledger.create_run("{}", "h", {})
        ledger.close()
    return tmp_path


@pytest.mark.parametrize("kind", [RunStorage, PoolLedger])
def test_a_folder_or_its_file_opens_its_kind(tmp_path, kind):
    make(tmp_path, kind)
    for path in (tmp_path, tmp_path / kind.FILENAME):
        with open_ledger(path) as ledger:
            assert type(ledger) is kind and ledger.root == tmp_path
            assert ledger.run()["id"] == 1
    assert is_pool_storage(tmp_path) == (kind is PoolLedger)
    other = PoolLedger if kind is RunStorage else RunStorage
    with pytest.raises(ConfigError, match=f"no {other.WHAT} \\({other.FILENAME}\\)"):
        open_ledger(tmp_path, other)
    assert not other.exists_in(tmp_path)  # opening never creates a ledger


def test_a_folder_with_both_opens_the_run_ledger_unless_the_pool_file_is_named(tmp_path):
    make(tmp_path, RunStorage, PoolLedger)
    assert held_ledgers(tmp_path) == [RunStorage, PoolLedger]
    with open_ledger(tmp_path) as ledger:
        assert isinstance(ledger, RunStorage)
    with open_ledger(tmp_path / PoolLedger.FILENAME) as ledger:
        assert isinstance(ledger, PoolLedger)
    with open_ledger(tmp_path, PoolLedger) as ledger:
        assert isinstance(ledger, PoolLedger)
    assert not is_pool_storage(tmp_path)


def test_no_ledger_is_one_line_naming_both_files(tmp_path):
    with pytest.raises(ConfigError) as info:
        open_ledger(tmp_path)
    assert str(info.value) == (f"{tmp_path}: no llm-evo ledger ({RunStorage.FILENAME} or "
                               f"{PoolLedger.FILENAME}) in this folder")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="no such storage folder"):
        open_ledger(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a storage folder"):
        open_ledger(tmp_path / "notes.txt")
    assert held_ledgers(tmp_path / "missing") == [] and not is_pool_storage(tmp_path)


def test_a_file_that_is_not_sqlite_is_one_line(tmp_path):
    (tmp_path / PoolLedger.FILENAME).write_text("not sqlite")
    with pytest.raises(ConfigError) as info:
        open_ledger(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / PoolLedger.FILENAME}: not a readable llm-evo ledger")
    assert "\n" not in message
