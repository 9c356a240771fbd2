"""What a declared ACL user may be given: never a command that shows a password or hands one out, never a
password in the resource. The CRD refuses such rules at apply time (one CEL rule, the same pattern the
operator uses); the operator denies those commands to every declared user whatever its rules say, inside
selectors too, and reports rules that asked for them (a resource stored without the CRD's check)."""

from __future__ import annotations

import re

import pytest

from redis_messaging.api import crd, models
from redis_messaging.builders import config
from redis_messaging.reconcile.acl import refused_rules

LEGITIMATE = [
    "~orders* +@stream +@read",
    "~orders* resetchannels -@all +@stream +ping +hello +auth +client",
    "+@all",  # the denied commands are taken out of it
    "+@all -@dangerous",
    "~* +@read +@write +@keyspace +cluster|slots +cluster|shards +info",
    "+cluster",  # cluster-aware clients; MEET and REPLICATE are taken out
    "%R~audit:* %W~out:* &events:* +@pubsub +xadd",
    "~* +get (+set ~cache:*)",
    "~configs:* +get",
    "~passwords:> +get",
]
REFUSED = [
    ("+config|get", "+config|get"),
    ("~* +CONFIG|GET", "+CONFIG|GET"),
    ("~* +config", "+config"),
    ("+acl|getuser", "+acl|getuser"),
    ("+acl", "+acl"),
    ("+acl|whoami", "+acl|whoami"),
    ("+monitor", "+monitor"),
    ("+debug", "+debug"),
    ("+module|load", "+module|load"),
    ("+replicaof", "+replicaof"),
    ("+SLAVEOF", "+SLAVEOF"),
    ("+cluster|meet", "+cluster|meet"),
    ("+cluster|replicate", "+cluster|replicate"),
    ("~* +get (+config|get ~*)", "(+config|get"),
    ("~* +get (~* +acl)", "+acl)"),
    ("~* >hunter2 +get", ">hunter2"),
    ("~* <hunter2", "<hunter2"),
    ("~* #" + "a" * 64, "#" + "a" * 64),
    ("~* !" + "a" * 64, "!" + "a" * 64),
    ("~* nopass +get", "nopass"),
    ("~*\t+config|get", "+config|get"),
]


@pytest.mark.parametrize("rules", LEGITIMATE)
def test_legitimate_rules_pass(rules: str) -> None:
    assert models.secret_rules(rules) == []
    assert models.parse_spec({"auth": {"users": [{"name": "app", "secretName": "s", "rules": rules}]}})


@pytest.mark.parametrize(("rules", "token"), REFUSED)
def test_rules_that_read_or_carry_a_password_are_found(rules: str, token: str) -> None:
    assert models.secret_rules(rules) == [token]


def _rules_node() -> dict[str, object]:
    spec = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    user = spec["properties"]["auth"]["properties"]["users"]["items"]
    return user["properties"]["rules"]  # type: ignore[no-any-return]


def _cel_unquote(literal: str) -> str:
    """A single-quoted CEL string literal's value (the escapes the rule uses: \\\\ and \\')."""
    return re.sub(r"\\(.)", r"\1", literal)


def test_the_crd_refuses_the_same_rules_at_apply_time() -> None:
    node = _rules_node()
    assert node["maxLength"] == 4096  # bounds the CEL rule's cost for the API server
    (validation,) = node["x-kubernetes-validations"]  # type: ignore[misc]
    literal = re.fullmatch(r"!self\.matches\('(.*)'\)", validation["rule"])
    assert literal is not None, validation["rule"]
    pattern = _cel_unquote(literal.group(1))
    assert pattern == models.SECRET_RULE_PATTERN
    for rules in LEGITIMATE:  # CEL's matches() is a search, like re.search (RE2 reads this pattern alike)
        assert re.search(pattern, rules) is None, rules
    for rules, _ in REFUSED:
        assert re.search(pattern, rules) is not None, rules
    assert "CONFIG" in validation["message"]


def test_every_declared_user_is_denied_what_reads_a_password() -> None:
    denied = " -config -acl -monitor -debug -module -replicaof -slaveof -cluster|meet -cluster|replicate"
    assert config.declared_rules("~orders* +@stream") == "~orders* +@stream" + denied
    assert config.declared_rules("+@all") == "+@all" + denied
    # a selector is not reached by the rules outside it: the denial goes inside each one too
    assert config.declared_rules("~* +get (+config|get ~*) (~a* +set)") == (
        f"~* +get (+config|get ~*{denied}) (~a* +set{denied})" + denied)
    assert config.declared_rules("( +get ~* )") == f"( +get ~*{denied}) " + denied.strip()
    assert config.declared_rules("()") == "(" + denied.strip() + ")" + denied
    # no password from the rules: the user's password is its Secret's
    assert config.declared_rules("~* >hunter2 nopass +get") == "~* +get" + denied
    spec = models.parse_spec({"auth": {"users": [{"name": "app", "secretName": "s", "rules": "+@all"}]}})
    assert config.users_acl(spec).splitlines()[0] == "user-0 app +@all" + denied


def test_rules_asking_for_more_are_reported_without_the_password() -> None:
    # model_construct: a resource stored before the CRD refused such rules (or without CEL)
    user = models.AclUser.model_construct(name="app", secret_name="s", rules="~* +config|get >hunter2 +@all")
    spec = models.parse_spec({}).model_copy(
        update={"auth": models.Auth.model_construct(enabled=True, secret_name=None, users=[user],
                                                    rotation_grace_seconds=0)})
    message = refused_rules(spec)
    assert message.startswith("user app: +config|get, a password rule not applied")
    assert "hunter2" not in message
    assert refused_rules(models.parse_spec({"auth": {"users": [
        {"name": "app", "secretName": "s", "rules": "~* +@all"}]}})) == ""
