"""The dependency graph (SPEC section 5), in process: pure functions over {name: UnitConfig}."""

import pytest

import zinit

U = zinit.UnitConfig


def units(*configs):
    return {config.name: config for config in configs}


# -- strongly_connected and find_cycles --------------------------------------


def test_no_cycles_in_a_dag():
    graph = units(
        U(name="web", requires=("db", "migrate")),
        U(name="migrate", requires=("db",)),
        U(name="worker", after=("web",), wants=("db",)),
        U(name="db"),
    )
    assert zinit.find_cycles(graph) == {}
    component = zinit.strongly_connected(graph)
    assert set(component) == set(graph)
    assert len(set(component.values())) == len(graph)  # every unit alone


def test_two_unit_cycle_is_spelled_out_from_each_member():
    graph = units(U(name="a", requires=("b",)), U(name="b", requires=("a",)), U(name="c"))
    assert zinit.find_cycles(graph) == {"a": "a → b → a", "b": "b → a → b"}
    component = zinit.strongly_connected(graph)
    assert component["a"] == component["b"] != component["c"]


def test_cycle_through_after_and_wants_edges():
    """Ordering edges of every kind close a cycle; conflicts do not."""
    graph = units(
        U(name="a", after=("b",)),
        U(name="b", wants=("c",)),
        U(name="c", requires=("a",)),
        U(name="d", conflicts=("e",)),
        U(name="e", conflicts=("d",)),
    )
    assert zinit.find_cycles(graph) == {
        "a": "a → b → c → a",
        "b": "b → c → a → b",
        "c": "c → a → b → c",
    }


def test_self_loop_is_a_cycle():
    graph = units(U(name="s", requires=("s",)), U(name="t", requires=("s",)))
    assert zinit.find_cycles(graph) == {"s": "s → s"}
    component = zinit.strongly_connected(graph)
    assert component["s"] != component["t"]


def test_two_separate_cycles_and_a_unit_hanging_off_one():
    graph = units(
        U(name="a", requires=("b",)),
        U(name="b", after=("a",)),
        U(name="c", wants=("d",)),
        U(name="d", requires=("e",)),
        U(name="e", requires=("c",)),
        U(name="x", requires=("a",)),  # depends on a cycle, is not on one
        U(name="y"),
    )
    assert zinit.find_cycles(graph) == {
        "a": "a → b → a",
        "b": "b → a → b",
        "c": "c → d → e → c",
        "d": "d → e → c → d",
        "e": "e → c → d → e",
    }
    component = zinit.strongly_connected(graph)
    assert component["a"] == component["b"]
    assert component["c"] == component["d"] == component["e"]
    assert len({component[n] for n in ("a", "c", "x", "y")}) == 4


def test_cycle_text_takes_a_shortest_way_back():
    """With a shortcut inside the component, the spelled cycle is the short one."""
    graph = units(
        U(name="a", requires=("b",)),
        U(name="b", requires=("c", "a")),
        U(name="c", requires=("a",)),
    )
    assert zinit.find_cycles(graph)["a"] == "a → b → a"
    assert zinit.find_cycles(graph)["c"] == "c → a → b → c"


def test_undefined_targets_are_ignored_by_the_graph():
    graph = units(U(name="web", requires=("db",), wants=("cache",), after=("nope",)))
    assert zinit.find_cycles(graph) == {}
    assert set(zinit.strongly_connected(graph)) == {"web"}


# -- requiring_closure -------------------------------------------------------


def test_requiring_closure_is_transitive_over_requires_only():
    graph = units(
        U(name="db"),
        U(name="migrate", requires=("db",)),
        U(name="web", requires=("migrate",)),
        U(name="worker", wants=("db",), after=("db",)),
        U(name="other"),
    )
    assert zinit.requiring_closure(["db"], graph) == {"db", "migrate", "web"}
    assert zinit.requiring_closure(["web"], graph) == {"web"}
    assert zinit.requiring_closure(["migrate", "other"], graph) == {"migrate", "web", "other"}


def test_requiring_closure_terminates_on_a_cycle():
    graph = units(U(name="a", requires=("b",)), U(name="b", requires=("a",)), U(name="c"))
    assert zinit.requiring_closure(["a"], graph) == {"a", "b"}


# -- pulled_in ---------------------------------------------------------------


def test_pulled_in_follows_requires_and_wants_not_after():
    graph = units(
        U(name="app", kind="target", requires=("web",), after=("late",)),
        U(name="web", requires=("db",), wants=("cache",)),
        U(name="db"),
        U(name="cache", status="stop"),
        U(name="late"),
    )
    assert zinit.pulled_in(["app"], graph) == ["app", "web", "db", "cache"]


def test_pulled_in_skips_ignore_and_undefined_units():
    graph = units(
        U(name="web", requires=("db", "ghost"), wants=("metrics",)),
        U(name="db"),
        U(name="metrics", status="ignore"),
    )
    assert zinit.pulled_in(["web", "nowhere"], graph) == ["web", "db"]


def test_pulled_in_terminates_on_a_cycle():
    graph = units(U(name="a", requires=("b",)), U(name="b", wants=("a",)))
    assert zinit.pulled_in(["a"], graph) == ["a", "b"]


# -- stop_waits --------------------------------------------------------------


def test_stop_waits_dependents_stop_first():
    graph = units(
        U(name="db"),
        U(name="web", requires=("db",)),
        U(name="worker", wants=("db",), after=("web",)),
        U(name="lonely"),
    )
    waits = zinit.stop_waits({"db", "web", "worker", "lonely"}, graph)
    assert waits == {
        "db": {"web", "worker"},
        "web": {"worker"},
        "worker": set(),
        "lonely": set(),
    }


def test_stop_waits_only_within_the_set():
    graph = units(U(name="db"), U(name="web", requires=("db",)), U(name="cli", requires=("db",)))
    assert zinit.stop_waits({"db", "web"}, graph) == {"db": {"web"}, "web": set()}


def test_stop_waits_drops_edges_inside_a_cycle():
    """A cycle cannot deadlock a shutdown; edges into the cycle still count."""
    graph = units(
        U(name="a", requires=("b",)),
        U(name="b", requires=("a",)),
        U(name="s", requires=("s",)),
        U(name="x", requires=("a",)),
    )
    assert zinit.stop_waits({"a", "b", "s", "x"}, graph) == {
        "a": {"x"},
        "b": set(),
        "s": set(),
        "x": set(),
    }


# -- size --------------------------------------------------------------------

CHAIN = 2000


@pytest.fixture(scope="module")
def chain():
    """u0 requires u1 requires ... u1999."""
    return {
        f"u{i}": U(name=f"u{i}", requires=(f"u{i + 1}",) if i < CHAIN - 1 else ())
        for i in range(CHAIN)
    }


def test_long_chain_has_no_cycle(chain):
    assert zinit.find_cycles(chain) == {}
    assert len(set(zinit.strongly_connected(chain).values())) == CHAIN


def test_long_chain_closures(chain):
    assert zinit.requiring_closure([f"u{CHAIN - 1}"], chain) == set(chain)
    assert zinit.pulled_in(["u0"], chain) == [f"u{i}" for i in range(CHAIN)]
    waits = zinit.stop_waits(set(chain), chain)
    assert waits[f"u{CHAIN - 1}"] == {f"u{CHAIN - 2}"}
    assert waits["u0"] == set()
    assert sum(len(w) for w in waits.values()) == CHAIN - 1


def test_long_chain_closed_into_a_ring(chain):
    ring = dict(chain)
    last = f"u{CHAIN - 1}"
    ring[last] = U(name=last, requires=("u0",))
    cycles = zinit.find_cycles(ring)
    assert len(cycles) == CHAIN
    assert cycles["u0"].startswith("u0 → u1 → u2")
    assert cycles["u0"].endswith(f"{last} → u0")
    assert cycles["u0"].count(" → ") == CHAIN


# -- dependency_tree ----------------------------------------------------------


def _nodes(forest):
    stack, count = list(forest), 0
    while stack:
        node = stack.pop()
        count += 1
        stack.extend(node["children"])
    return count


def test_tree_walks_a_shared_dependency_once():
    """Layers of two, each unit requiring both of the next: one node per unit and edge
    (paths would number 2**24), the second meeting of a unit marked, not walked."""
    layers = 24
    graph = units(
        *(
            U(name=f"l{i}{side}", requires=(f"l{i + 1}a", f"l{i + 1}b") if i < layers - 1 else ())
            for i in range(layers)
            for side in "ab"
        )
    )
    forest = zinit.dependency_tree(graph)
    assert [root["name"] for root in forest] == ["l0a", "l0b"]
    edges = 2 * 2 * (layers - 1)
    assert _nodes(forest) == edges + 2  # every edge once, plus the two roots
    assert [child.get("repeated") for child in forest[1]["children"]] == [True, True]
    l1b = forest[0]["children"][1]  # its dependencies are l1a's, walked under l1a
    assert [(c["name"], c.get("repeated")) for c in l1b["children"]] == [
        ("l2a", True),
        ("l2b", True),
    ]
    # l3a: its own two edges, those of the 19 layers below it but the last, and itself
    assert _nodes(zinit.dependency_tree(graph, "l3a")) == 2 + 2 * 2 * (layers - 5) + 1


def test_tree_stops_at_its_depth_limit(chain):
    """A chain deeper than the limit is cut, and the cut node says so."""
    forest = zinit.dependency_tree(chain, "u0")
    node, depth = forest[0], 0
    while node["children"]:
        node, depth = node["children"][0], depth + 1
    assert depth == zinit._TREE_MAX_DEPTH and node.get("truncated") is True
