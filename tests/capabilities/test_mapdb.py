"""The mapping database: map, grant, recursive unmap, reduce, delete."""
from __future__ import annotations

from capabilities.mapdb import Kind, MappingDb

OBJ = Kind.OBJECT


def chain():
    db = MappingDb()
    gate = object()
    root, _ = db.insert_root(1, OBJ, 10, gate, 0xF)
    b, _ = db.map(root, 2, 20, 0x5)
    c, _ = db.map(b, 3, 30, 0x4)
    return db, gate, root, b, c


def test_map_makes_children():
    db, gate, root, b, c = chain()
    assert b.parent is root and c.parent is b
    assert [n.key for n in root.subtree()] == [(1, OBJ, 10), (2, OBJ, 20), (3, OBJ, 30)]


def test_unmap_other_spaces_revokes_recursively_and_keeps_the_source():
    db, gate, root, b, c = chain()
    removed = db.unmap(root, include_self=False)
    assert {n.key for n in removed} == {(2, OBJ, 20), (3, OBJ, 30)}
    assert db.get(1, OBJ, 10) is root and db.get(2, OBJ, 20) is None and db.get(3, OBJ, 30) is None
    assert not b.live and not c.live


def test_unmap_all_spaces_removes_the_source_too():
    db, gate, root, b, c = chain()
    db.unmap(b, include_self=True)
    assert db.get(2, OBJ, 20) is None and db.get(3, OBJ, 30) is None and db.get(1, OBJ, 10) is root
    assert root.children == []


def test_grant_moves_and_keeps_the_tree():
    db, gate, root, b, c = chain()
    moved, _ = db.grant(b, 4, 40, 0x5)
    assert db.get(2, OBJ, 20) is None and db.get(4, OBJ, 40) is moved
    assert moved.parent is root and c.parent is moved and root.children == [moved]
    db.unmap(root, include_self=False)
    assert db.get(3, OBJ, 30) is None  # revoking the grantor's source still reaches what was granted on


def test_reduce_strips_rights_in_the_subtree_only():
    db, gate, root, b, c = chain()
    db.reduce(root, 0x1, include_self=False)
    assert root.rights == 0xF and b.rights == 0x4 and c.rights == 0x4


def test_occupied_slot_is_replaced():
    db, gate, root, b, c = chain()
    other, _ = db.insert_root(1, OBJ, 11, object(), 0x7)
    new, removed = db.map(other, 2, 20, 0x5)
    assert [n.key for n in removed] == [(2, OBJ, 20), (3, OBJ, 30)]
    assert db.get(2, OBJ, 20) is new


def test_delete_object_empties_every_slot():
    db, gate, root, b, c = chain()
    db.insert_root(5, OBJ, 50, gate, 0x4)
    db.delete_object(gate)
    assert db.holders(gate) == [] and len(db) == 0


def test_remove_space_revokes_what_it_handed_out():
    db, gate, root, b, c = chain()
    removed = db.remove_space(2)
    assert {n.key for n in removed} == {(2, OBJ, 20), (3, OBJ, 30)}
    assert db.get(1, OBJ, 10) is root
