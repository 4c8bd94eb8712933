#!/usr/bin/env bash
# Download the Llama 2 tokenizer and model weights with the presigned URL that
# Meta sends by e-mail, then verify every file against Meta's MD5 checklists.
#
# Interactive:      ./download.sh
# Non-interactive:  PRESIGNED_URL='https://...*...' MODEL_SIZE=7B,13B-chat ./download.sh
#
# Environment (all optional; see docs/download.md):
#   PRESIGNED_URL                 URL from the e-mail (asked for when unset)
#   MODEL_SIZE                    comma-separated models; empty = all (asked for when unset)
#   TARGET_FOLDER                 where to put the files (default ".")
#   LLAMA_DOWNLOAD_RETRIES        retries per file after a transient failure (default 3)
#   LLAMA_DOWNLOAD_RETRY_DELAY    seconds before retry n is n times this (default 2)
#
# Written for bash 3.2 (macOS) as well as current bash.

set -euo pipefail

ALL_MODELS="7B,13B,70B,7B-chat,13B-chat,70B-chat"

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

warn() {
    printf 'warning: %s\n' "$*" >&2
}

is_uint() {
    case $1 in
        '' | *[!0-9]*) return 1 ;;
        *) return 0 ;;
    esac
}

trim() {
    local s=$1
    s=${s#"${s%%[![:space:]]*}"}
    s=${s%"${s##*[![:space:]]}"}
    printf '%s' "$s"
}

# Sets MODEL_DIR and MODEL_SHARDS for a model name (case-insensitive);
# returns 1 for an unknown name.
lookup_model() {
    local name
    name=$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')
    case $name in
        7b) MODEL_DIR=llama-2-7b MODEL_SHARDS=1 ;;
        13b) MODEL_DIR=llama-2-13b MODEL_SHARDS=2 ;;
        70b) MODEL_DIR=llama-2-70b MODEL_SHARDS=8 ;;
        7b-chat) MODEL_DIR=llama-2-7b-chat MODEL_SHARDS=1 ;;
        13b-chat) MODEL_DIR=llama-2-13b-chat MODEL_SHARDS=2 ;;
        70b-chat) MODEL_DIR=llama-2-70b-chat MODEL_SHARDS=8 ;;
        *) return 1 ;;
    esac
}

# ---------------------------------------------------------------- settings --

RETRIES=${LLAMA_DOWNLOAD_RETRIES:-3}
RETRY_DELAY=${LLAMA_DOWNLOAD_RETRY_DELAY:-2}
TARGET_FOLDER=${TARGET_FOLDER:-.}
is_uint "$RETRIES" ||
    die "LLAMA_DOWNLOAD_RETRIES must be a whole number, got '$RETRIES'"
is_uint "$RETRY_DELAY" ||
    die "LLAMA_DOWNLOAD_RETRY_DELAY must be a whole number of seconds, got '$RETRY_DELAY'"

# ----------------------------------------------------------------- answers --
# A variable that is set (even to "") counts as answered; otherwise ask.

if [ -z "${PRESIGNED_URL+set}" ]; then
    PRESIGNED_URL=
    read -r -p "Enter the URL from the e-mail: " PRESIGNED_URL || true
fi
PRESIGNED_URL=$(trim "$PRESIGNED_URL")

if [ -z "${MODEL_SIZE+set}" ]; then
    MODEL_SIZE=
    read -r -p "Enter the models to download, comma-separated ($ALL_MODELS), or press Enter for all: " MODEL_SIZE || true
fi

[ -n "$PRESIGNED_URL" ] ||
    die "no presigned URL given: set PRESIGNED_URL or paste the URL from Meta's e-mail when asked"
case $PRESIGNED_URL in
    http://* | https://*) ;;
    *) die "the presigned URL must start with https:// (got '$PRESIGNED_URL')" ;;
esac
case $PRESIGNED_URL in
    *'*'*) ;;
    *) die "the presigned URL has no '*' to replace with a file name; copy the whole URL from Meta's e-mail" ;;
esac
# Everything before the first '*' and everything after it (the signed query).
URL_HEAD=${PRESIGNED_URL%%\**}
URL_TAIL=${PRESIGNED_URL#*\*}

# Validate every model name before anything is downloaded.
# SELECTED holds "folder:shards" words in the order given, without duplicates.
MODEL_LIST=$(printf '%s' "$MODEL_SIZE" | tr -d '[:space:]')
[ -n "$MODEL_LIST" ] || MODEL_LIST=$ALL_MODELS
SELECTED=""
UNKNOWN=""
rest=$MODEL_LIST,
while [ -n "$rest" ]; do
    name=${rest%%,*}
    rest=${rest#*,}
    [ -n "$name" ] || continue
    if lookup_model "$name"; then
        case " $SELECTED " in
            *" $MODEL_DIR:"*) ;;
            *) SELECTED="$SELECTED $MODEL_DIR:$MODEL_SHARDS" ;;
        esac
    else
        UNKNOWN="$UNKNOWN${UNKNOWN:+, }'$name'"
    fi
done
[ -z "$UNKNOWN" ] ||
    die "unknown model name $UNKNOWN; choose from $ALL_MODELS (comma-separated, or empty for all)"

# ------------------------------------------------------------------- tools --

WGET_SHOW_PROGRESS=no
if command -v wget >/dev/null 2>&1; then
    DOWNLOADER=wget
    # --show-progress needs wget 1.16 or later.
    case $(wget --help 2>/dev/null || true) in
        *--show-progress*) WGET_SHOW_PROGRESS=yes ;;
    esac
elif command -v curl >/dev/null 2>&1; then
    DOWNLOADER=curl
else
    die "neither wget nor curl was found on PATH; install one of them"
fi

if command -v md5sum >/dev/null 2>&1; then
    MD5_TOOL=md5sum
elif command -v md5 >/dev/null 2>&1; then
    MD5_TOOL=md5
elif command -v python3 >/dev/null 2>&1; then
    MD5_TOOL=python3
else
    die "no MD5 tool found on PATH (need md5sum, md5 or python3) to verify the checksums"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/llama-download.XXXXXX") ||
    die "cannot create a temporary directory"
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------- download --

# Runs the downloader once for URL -> DEST (resuming DEST if it exists).
# Sets DL_RC (exit status of the tool) and DL_CODE (last HTTP status, or "").
download_once() {
    local url=$1 dest=$2
    : >"$WORK/out"
    : >"$WORK/log"
    if [ "$DOWNLOADER" = wget ]; then
        set -- wget --continue --tries=1 --connect-timeout=30 --read-timeout=60
        if [ -t 2 ] && [ "$WGET_SHOW_PROGRESS" = yes ]; then
            # One progress bar per file; errors still printed (and parsed).
            set -- "$@" --no-verbose --show-progress --progress=bar:force
        elif [ -t 2 ]; then
            set -- "$@" --progress=bar:force
        else
            set -- "$@" --no-verbose --server-response
        fi
        set -- "$@" --output-document="$dest" "$url"
    else
        set -- curl --location --fail --continue-at - --connect-timeout 30 \
            --speed-limit 1 --speed-time 60 --write-out '%{http_code}'
        if [ -t 2 ]; then
            set -- "$@" --progress-bar
        else
            set -- "$@" --silent --show-error
        fi
        set -- "$@" --output "$dest" "$url"
    fi

    DL_RC=0
    if [ -t 2 ]; then
        # Show the progress bar and keep a copy of it to find the HTTP status.
        LC_ALL=C "$@" 2>&1 >"$WORK/out" | tee "$WORK/log" >&2 || DL_RC=$?
    else
        LC_ALL=C "$@" >"$WORK/out" 2>"$WORK/log" || DL_RC=$?
    fi

    DL_CODE=""
    if [ "$DOWNLOADER" = curl ]; then
        DL_CODE=$(cat "$WORK/out")
        [ "$DL_CODE" != 000 ] || DL_CODE=""
    else
        # wget: "ERROR 403: Forbidden." (wget2: "HTTP ERROR response 403 ..."),
        # else the last status line printed by --server-response.
        DL_CODE=$(sed -n 's/.*ERROR[a-z ]* \([1-5][0-9][0-9]\).*/\1/p' "$WORK/log" | tail -n 1)
        if [ -z "$DL_CODE" ]; then
            DL_CODE=$(sed -n 's/^[[:space:]]*HTTP\/[0-9.]* \([1-5][0-9][0-9]\).*/\1/p' "$WORK/log" | tail -n 1)
        fi
    fi
}

# Last non-blank line the downloader printed, for error messages.
last_log_line() {
    tr '\r' '\n' <"$WORK/log" | sed '/^[[:space:]]*$/d' | tail -n 1 | cut -c 1-200
}

# fetch REL: download TARGET_FOLDER/REL from the bucket, resuming a partial
# file and retrying transient failures. Exits with an error otherwise.
fetch() {
    local rel=$1 dest url attempt=0 existed=0 reason
    dest=$TARGET_FOLDER/$rel
    url=$URL_HEAD$rel$URL_TAIL
    [ ! -e "$dest" ] || existed=1
    printf '  %s\n' "$rel"
    while :; do
        attempt=$((attempt + 1))
        download_once "$url" "$dest"
        [ "$DL_RC" -ne 0 ] || return 0
        # Nothing useful was fetched: do not leave an empty file behind.
        if [ "$existed" -eq 0 ] && [ -f "$dest" ] && [ ! -s "$dest" ]; then
            rm -f "$dest"
        fi
        case $DL_CODE in
            416)
                # Range starts at the end: the file on disk is already complete.
                [ ! -s "$dest" ] || return 0
                ;;
            403)
                die "HTTP 403 Forbidden for $rel: the presigned URL has probably expired (they are valid for 24 hours); request a new URL from Meta and run again"
                ;;
            404)
                die "HTTP 404 Not Found: $rel is not at the presigned URL (check the URL and the model names)"
                ;;
            408 | 429) ;;
            4??)
                die "HTTP $DL_CODE for $rel"
                ;;
        esac
        if { [ "$DOWNLOADER" = curl ] && [ "$DL_RC" -eq 23 ]; } ||
            { [ "$DOWNLOADER" = wget ] && [ "$DL_RC" -eq 3 ]; }; then
            die "cannot write $dest: $(last_log_line)"
        fi
        if [ "$DOWNLOADER" = curl ] && [ "$DL_RC" -eq 33 ]; then
            die "cannot resume $rel: the server ignored the range request; delete $dest and run again"
        fi
        reason="$DOWNLOADER exit status $DL_RC${DL_CODE:+, HTTP $DL_CODE}"
        if [ "$attempt" -gt "$RETRIES" ]; then
            die "failed to download $rel after $attempt attempts ($reason): $(last_log_line)"
        fi
        warn "downloading $rel failed ($reason); retry $attempt of $RETRIES in $((RETRY_DELAY * attempt))s"
        sleep "$((RETRY_DELAY * attempt))"
    done
}

# ------------------------------------------------------------------ verify --

md5_of() {
    local out
    case $MD5_TOOL in
        md5sum) out=$(md5sum <"$1") || return 1 ;;
        md5) out=$(md5 -r "$1") || return 1 ;;
        python3)
            out=$(python3 -c '
import hashlib, sys
h = hashlib.md5()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())
' "$1") || return 1
            ;;
    esac
    printf '%s' "${out%%[[:space:]]*}" | tr '[:upper:]' '[:lower:]'
}

# verify DIR CHECKLIST: check every "md5  name" line of DIR/CHECKLIST, where
# DIR is relative to TARGET_FOLDER ("" for TARGET_FOLDER itself) and each name
# is relative to DIR. Exits with an error naming every bad file.
verify() {
    local dir=$1 list=$2 base prefix want name shown got bad="" count=0
    base=$TARGET_FOLDER${dir:+/$dir}
    prefix=${dir:+$dir/}
    printf 'Checking checksums in %s%s\n' "$prefix" "$list"
    [ -s "$base/$list" ] || die "checklist $prefix$list is missing or empty"
    while read -r want name <&3 || [ -n "$want" ]; do
        name=${name%$'\r'}
        case $want in '' | '#'*) continue ;; esac
        name=${name#\*}
        if [ "${#want}" -ne 32 ] || [ -z "$name" ]; then
            die "malformed line in $prefix$list: '$want $name'"
        fi
        case $want in *[!0-9a-fA-F]*) die "malformed line in $prefix$list: '$want $name'" ;; esac
        want=$(printf '%s' "$want" | tr '[:upper:]' '[:lower:]')
        count=$((count + 1))
        shown=$prefix$name
        if [ ! -f "$base/$name" ]; then
            printf '%s: MISSING\n' "$shown"
            bad="$bad${bad:+, }$shown (missing)"
            continue
        fi
        got=$(md5_of "$base/$name") || die "cannot compute the MD5 of $shown"
        if [ "$got" = "$want" ]; then
            printf '%s: OK\n' "$shown"
        else
            printf '%s: FAILED\n' "$shown"
            bad="$bad${bad:+, }$shown"
        fi
    done 3<"$base/$list"
    [ "$count" -gt 0 ] || die "checklist $prefix$list lists no files"
    [ -z "$bad" ] ||
        die "checksum mismatch: $bad; delete the bad file(s) and run again to download them anew"
}

# -------------------------------------------------------------------- main --

mkdir -p "$TARGET_FOLDER" || die "cannot create target folder $TARGET_FOLDER"
printf 'Using %s; verifying with %s; saving to %s\n' "$DOWNLOADER" "$MD5_TOOL" "$TARGET_FOLDER"

echo "Downloading LICENSE and Acceptable Use Policy"
fetch LICENSE
fetch USE_POLICY.md

echo "Downloading tokenizer"
fetch tokenizer.model
fetch tokenizer_checklist.chk
verify "" tokenizer_checklist.chk

for entry in $SELECTED; do
    dir=${entry%%:*}
    shards=${entry#*:}
    echo "Downloading $dir"
    mkdir -p "$TARGET_FOLDER/$dir" || die "cannot create folder $TARGET_FOLDER/$dir"
    s=0
    while [ "$s" -lt "$shards" ]; do
        fetch "$dir/consolidated.$(printf '%02d' "$s").pth"
        s=$((s + 1))
    done
    fetch "$dir/params.json"
    fetch "$dir/checklist.chk"
    verify "$dir" checklist.chk
done

echo "Done: all files downloaded and verified."
