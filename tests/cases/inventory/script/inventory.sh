#!/bin/sh
# An inventory script as a cloud plugin writes one: groups, children, a bare list, _meta.hostvars.
case "$1" in
--list)
    cat <<'JSON'
{
    "web": {"hosts": ["web1", "web2"], "vars": {"http_port": 80, "motd": "{{ greeting }}"}},
    "db": ["db1", "db2"],
    "prod": {"children": ["web", "db"], "vars": {"env": "prod", "ansible_group_priority": 5}},
    "empty": {"hosts": []},
    "lonely": {"hosts": ["solo"], "children": []},
    "oddly": {"region": "eu"},
    "_meta": {
        "hostvars": {
            "web1": {"ansible_host": "10.0.0.1", "rack": null, "disks": [1, 2.5, true]},
            "db1": {"env": "db-own", "raw": {"__ansible_unsafe": "{{ not templated }}"}},
            "ghost": {"never": "listed"}
        }
    }
}
JSON
    ;;
--host)
    echo '{"asked": "'"$2"'"}'
    ;;
*)
    echo "usage: $0 --list | --host NAME" >&2
    exit 2
    ;;
esac
