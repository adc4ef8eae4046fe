"""A config never plans the same run twice: a list that repeats an entry which would plan a run
directory (or one job under two directories) again is refused in one line; the lists whose repeats
plan nothing new are deduplicated.  Otherwise the tables would count one run twice (n doubled,
the std too small)."""

import pytest

from kdpipe.errors import KdpipeError
from kdpipe.plan import plan
from kdpipe.workflow import SEEDED_RULES, load_config, run_options, run_wildcards

SELF_PAIR = [{"teacher": "resnet20", "student": "resnet20"}]


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"dml": {"cohorts": [["resnet20", "resnet20"], ["resnet20", "resnet20"]]}},
            (
                "config dml.cohorts.1: [resnet20, resnet20] repeats dml.cohorts.0; list each cohort once "
                "(the same peers in another order are another cohort)"
            ),
        ),
        (
            {"dml": {"cohorts": [["resnet8", "resnet20"], ["resnet20", "resnet8"], ["resnet8", "resnet20"]]}},
            (
                "config dml.cohorts.2: [resnet8, resnet20] repeats dml.cohorts.0; list each cohort once "
                "(the same peers in another order are another cohort)"
            ),
        ),
        (
            {"pairs": SELF_PAIR, "bss": {"nets": ["resnet20"], "pairs": True}},
            (
                "config bss.nets: resnet20 is also the born-again chain that bss.pairs plans for pairs.0 "
                "(resnet20 -> resnet20), the same runs twice; drop resnet20 from bss.nets, the pair's chain "
                "already trains it"
            ),
        ),
        (
            {"datasets": ["digits", "digits"], "base": {"nets": ["resnet8"]}},
            "config datasets: [digits, digits] repeats digits; list each dataset once",
        ),
    ],
    ids=["dml-cohort", "dml-cohort-after-a-permutation", "bss-self-pair", "datasets"],
)
def test_a_repeated_run_is_refused_in_one_line(config, message):
    with pytest.raises(KdpipeError) as err:
        load_config(config)
    assert str(err.value) == message


def test_a_permuted_cohort_is_another_cohort():
    """A cohort's peers in role order name its run directory, its roles (net1 = the first peer) and its
    report group: the same peers in another order train another way round and are reported apart."""
    config = load_config({"dml": {"cohorts": [["resnet8", "resnet20"], ["resnet20", "resnet8"]]}})
    dml = [r for r in plan(config) if r.method == "dml"]
    assert [(r.run_dir, r.group, r.peers) for r in dml] == [
        ("results/digits/dml/resnet8-resnet20/seed0", "resnet8-resnet20", ("resnet8", "resnet20")),
        ("results/digits/dml/resnet20-resnet8/seed0", "resnet20-resnet8", ("resnet20", "resnet8")),
    ]


def test_a_self_pair_chain_is_the_nets_born_again_chain(monkeypatch):
    """Why bss.nets may not also list a network that a pair teaches itself under bss.pairs: both chains'
    jobs read the same generation-0 model and get the same options (with or without teacher_seed), so
    they are one set of runs under two directories, which the report would pool into one cell."""
    import kdpipe.config

    monkeypatch.setattr(kdpipe.config, "_check_bss_chains", lambda config: None)
    for seed in (None, 0):
        config = load_config(
            {
                "pairs": SELF_PAIR,
                "bss": {"nets": ["resnet20"], "pairs": True, "generations": 2},
                "seeds": [1, 2],
                "teacher_seed": seed,
            }
        )
        chains: dict[str, list] = {}
        for run in plan(config):
            if run.method == "bss":
                chain = run.run_dir.split("/bss/")[1].split("/")[0]
                inputs = SEEDED_RULES["train_bss"].inputs(config, run_wildcards(run), run.seed)
                teacher = inputs["teacher"].replace(f"/bss/{chain}/", "/bss/<chain>/")
                key = {k: v for k, v in run.record().items() if k not in ("run_dir", "log")}
                chains.setdefault(chain, []).append((key, teacher, run_options(config, run)))
        assert set(chains) == {"resnet20", "resnet20-resnet20"}
        assert chains["resnet20"] == chains["resnet20-resnet20"]


def test_repeats_that_plan_nothing_new_are_deduplicated():
    """kd.modes / with_st / with_dot, base.nets and bss.nets list variants and networks: a repeat names
    the same node, which the plan keeps once."""
    once = {
        "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
        "base": {"nets": ["resnet8"]},
        "kd": {"modes": ["st"], "with_st": ["at"], "with_dot": ["st"]},
        "bss": {"nets": ["resnet8"]},
    }
    twice = {
        "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
        "base": {"nets": ["resnet8", "resnet8"]},
        "kd": {"modes": ["st", "st"], "with_st": ["at", "at"], "with_dot": ["st", "st"]},
        "bss": {"nets": ["resnet8", "resnet8"]},
    }
    assert plan(load_config(twice)) == plan(load_config(once))


def test_every_planned_run_has_its_own_directory_and_report_identity():
    """In a config with every kind of run (two datasets, a sweep, permuted and repeated-peer cohorts, net
    chains beside pair chains, a self pair): no run directory is planned twice, and no two runs share a
    report identity (dataset, method, variant, teacher, student, peers, sweep, generation, seed), so no
    table cell or plot line holds two different runs."""
    config = load_config(
        {
            "datasets": ["digits", "cifar10"],
            "seeds": [0, 1],
            "teacher_seed": 0,
            "pairs": [
                {"teacher": "resnet20", "student": "resnet8"},
                {"teacher": "resnet8", "student": "resnet8"},
            ],
            "base": {"nets": ["resnet14"]},
            "kd": {"modes": ["st"], "with_st": ["at"], "sweep": {"st": {"T": [2, 8]}}},
            "ft": {"enabled": True},
            "crd": {"enabled": True, "with_st": True},
            "dml": {"cohorts": [["resnet8", "resnet20"], ["resnet20", "resnet8"], ["resnet8", "resnet8"]]},
            "bss": {"nets": ["resnet20", "resnet14"], "pairs": True, "generations": 2},
        }
    )
    runs = plan(config)
    dirs = [r.run_dir for r in runs]
    assert len(dirs) == len(set(dirs))
    identity = [
        (r.dataset, r.method, r.variant, r.teacher, r.student, r.peers, r.sweep, r.generation, r.seed, r.group)
        for r in runs
    ]
    assert len(identity) == len(set(identity))
    bss_groups = {r.group for r in runs if r.method == "bss"}
    assert bss_groups == {"resnet20-resnet20", "resnet14-resnet14", "resnet20-resnet8", "resnet8-resnet8"}
