#!/bin/sh
# A stand-in backup: writes a small dump file, keeps the newest --keep of them, prints its path.
set -eu
dir=/tmp/easytask-demo/backups
keep=7
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir=$2; shift 2 ;;
        --keep) keep=$2; shift 2 ;;
        *) echo "ERROR unknown argument: $1" >&2; exit 2 ;;
    esac
done
label="database"
if [ -f "$dir/backup.conf" ]; then
    . "$dir/backup.conf"
fi
mkdir -p "$dir"
file="$dir/dump-$(date +%Y%m%d-%H%M%S)-$$.sql"
{
    echo "-- $label, $(date)"
    echo "SELECT 1;"
} > "$file"
ls -1t "$dir"/dump-*.sql | tail -n +$((keep + 1)) | xargs -r rm -f --
echo "$file"
