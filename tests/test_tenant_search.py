"""`GET /v1/tenants?q=`: a case-insensitive substring of the id, the name or a domain (trigram-indexed)."""
from __future__ import annotations

from helpers import create_tenant


def ids(client, auth, q: str) -> list[str]:
    response = client.get("/v1/tenants", query_string={"q": q}, headers=auth)
    assert response.status_code == 200, response.get_json()
    return sorted(t["id"] for t in response.get_json())


def test_search_over_id_name_and_domains(client, auth) -> None:
    create_tenant(client, auth, "smile-dental", name="Smile Dental", domains=["smile.example.com"])
    create_tenant(client, auth, "glow-skin", name="Glow Aesthetics 100%", domains=["book.glowskin.example"])
    create_tenant(client, auth, "acme-clinic", name="Acme Clinic")
    assert ids(client, auth, "dental") == ["smile-dental"]            # id and name
    assert ids(client, auth, "AESTHETIC") == ["glow-skin"]            # name, any case
    assert ids(client, auth, "glowskin.exa") == ["glow-skin"]         # a domain only
    assert ids(client, auth, "e-") == ["acme-clinic", "smile-dental"]  # shorter than a trigram
    assert ids(client, auth, "100%") == ["glow-skin"]                 # % is a character, not a wildcard
    assert ids(client, auth, "1_0") == []                             # _ too
    assert ids(client, auth, "nothing-like-it") == []
