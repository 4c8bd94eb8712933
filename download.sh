#!/usr/bin/env bash
# Download Meta's Llama 2 or Llama 3 weights with the presigned URL that Meta
# sends by e-mail, then verify every file against Meta's MD5 checklists.
# Same files and folders as the `download.sh` of Meta's `meta-llama/llama`
# (Llama 2) and `meta-llama/llama3` repositories, in one script.
#
# Run `./download.sh --help` for the models, the environment variables for
# non-interactive use and examples; README.md ("Downloading the weights")
# says the same at more length.
#
# Written for bash 3.2 (macOS) as well as current bash.

set -euo pipefail

LLAMA2_MODELS="7B,13B,70B,7B-chat,13B-chat,70B-chat"
LLAMA3_MODELS="8B,8B-instruct,70B,70B-instruct"

usage() {
    cat <<USAGE
Usage: ./download.sh [-h | --help]

Downloads Meta's Llama 2 or Llama 3 weights with the presigned URL from Meta's
e-mail (it contains a '*' and is valid for 24 hours), then checks every file
against Meta's MD5 checklists. There are no other arguments: the script asks
for the URL and the models, or takes them from the environment variables below.

Models (comma-separated, any case; empty = every model of the family):
  Llama 2: $LLAMA2_MODELS
           -> tokenizer.model at the top, llama-2-7b/, llama-2-13b-chat/, ...
  Llama 3: $LLAMA3_MODELS
           -> Meta-Llama-3-8B/, ..., each with its own tokenizer.model
  "Llama 3" is Meta Llama 3 (meta-llama/llama3); Llama 3.1 and later are not
  served through this script.

Family: a presigned URL serves one family only, and 70B exists in both.
  - LLAMA_FAMILY=2 or LLAMA_FAMILY=3 decides it when set.
  - Otherwise a name only one family has decides it (7B, 13B, *-chat: Llama 2;
    8B, *-instruct: Llama 3), and the script says which it chose. A list with
    names from both families is refused.
  - A list that does not tell (only 70B, or empty = all) is asked about when
    the model list was asked for or input is a terminal; otherwise the script
    stops and asks you to set LLAMA_FAMILY.

Environment (all optional):
  PRESIGNED_URL               URL from the e-mail (asked for when unset)
  MODEL_SIZE                  comma-separated models; set but empty = all
                              (asked for when unset)
  LLAMA_FAMILY                2 or 3: the family the URL is for (see Family)
  TARGET_FOLDER               where to put the files (default ".")
  LLAMA_DOWNLOAD_RETRIES      retries per file after a transient failure
                              (default 3)
  LLAMA_DOWNLOAD_RETRY_DELAY  seconds; retry n waits n times this (default 2)

Examples ('https://...' stands for the whole URL from the e-mail):
  ./download.sh     # asks for the URL, the models and, if needed, the family
  # with a Llama 2 URL
  PRESIGNED_URL='https://...' MODEL_SIZE=7B,7B-chat ./download.sh
  PRESIGNED_URL='https://...' LLAMA_FAMILY=2 MODEL_SIZE= ./download.sh  # all
  # with a Llama 3 URL
  PRESIGNED_URL='https://...' MODEL_SIZE=8B,8B-instruct ./download.sh
  PRESIGNED_URL='https://...' LLAMA_FAMILY=3 MODEL_SIZE=70B ./download.sh

Quote the URL: it contains '*' and '&'. Run the same command again to resume an
interrupted download; complete files are not fetched again. Needs wget or curl,
and md5sum, md5 (macOS) or python3.
USAGE
}

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

lower() {
    printf '%s' "$1" | tr '[:upper:]' '[:lower:]'
}

# lookup_model FAMILY NAME: sets REMOTE_DIR (folder in Meta's bucket),
# LOCAL_DIR (folder on disk) and SHARDS for a model name (case-insensitive);
# returns 1 when FAMILY has no such model.
lookup_model() {
    case $1:$(lower "$2") in
        2:7b) LOCAL_DIR=llama-2-7b SHARDS=1 ;;
        2:13b) LOCAL_DIR=llama-2-13b SHARDS=2 ;;
        2:70b) LOCAL_DIR=llama-2-70b SHARDS=8 ;;
        2:7b-chat) LOCAL_DIR=llama-2-7b-chat SHARDS=1 ;;
        2:13b-chat) LOCAL_DIR=llama-2-13b-chat SHARDS=2 ;;
        2:70b-chat) LOCAL_DIR=llama-2-70b-chat SHARDS=8 ;;
        3:8b) REMOTE_DIR=8b_pre_trained LOCAL_DIR=Meta-Llama-3-8B SHARDS=1 ;;
        3:8b-instruct) REMOTE_DIR=8b_instruction_tuned LOCAL_DIR=Meta-Llama-3-8B-Instruct SHARDS=1 ;;
        3:70b) REMOTE_DIR=70b_pre_trained LOCAL_DIR=Meta-Llama-3-70B SHARDS=8 ;;
        3:70b-instruct) REMOTE_DIR=70b_instruction_tuned LOCAL_DIR=Meta-Llama-3-70B-Instruct SHARDS=8 ;;
        *) return 1 ;;
    esac
    # Llama 2's bucket uses the local folder names.
    [ "$1" = 3 ] || REMOTE_DIR=$LOCAL_DIR
}

models_of() {
    if [ "$1" = 2 ]; then printf '%s' "$LLAMA2_MODELS"; else printf '%s' "$LLAMA3_MODELS"; fi
}

# ------------------------------------------------------------------- usage --

case ${1-} in
    -h | --help)
        usage
        exit 0
        ;;
esac
[ "$#" -eq 0 ] ||
    die "unexpected argument '$1'; the only option is --help (answers come from prompts or environment variables)"

# ---------------------------------------------------------------- settings --

RETRIES=${LLAMA_DOWNLOAD_RETRIES:-3}
RETRY_DELAY=${LLAMA_DOWNLOAD_RETRY_DELAY:-2}
TARGET_FOLDER=${TARGET_FOLDER:-.}
is_uint "$RETRIES" ||
    die "LLAMA_DOWNLOAD_RETRIES must be a whole number, got '$RETRIES'"
is_uint "$RETRY_DELAY" ||
    die "LLAMA_DOWNLOAD_RETRY_DELAY must be a whole number of seconds, got '$RETRY_DELAY'"
FAMILY=$(trim "${LLAMA_FAMILY-}")
case $FAMILY in
    '' | 2 | 3) ;;
    *) die "LLAMA_FAMILY must be 2 (Llama 2) or 3 (Llama 3), got '$FAMILY'; unset it to let the model names decide" ;;
esac

# ----------------------------------------------------------------- answers --
# A variable that is set (even to "") counts as answered; otherwise ask.

if [ -z "${PRESIGNED_URL+set}" ]; then
    PRESIGNED_URL=
    read -r -p "Enter the URL from the e-mail: " PRESIGNED_URL || true
fi
PRESIGNED_URL=$(trim "$PRESIGNED_URL")

# Check the URL before asking anything else.
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

MODELS_ASKED=no
if [ -z "${MODEL_SIZE+set}" ]; then
    MODEL_SIZE=
    MODELS_ASKED=yes
    if [ -n "$FAMILY" ]; then
        choices=$(models_of "$FAMILY")
    else
        choices="Llama 2: $LLAMA2_MODELS; Llama 3: $LLAMA3_MODELS"
    fi
    read -r -p "Enter the models to download, comma-separated ($choices), or press Enter for all: " MODEL_SIZE || true
fi
MODEL_LIST=$(printf '%s' "$MODEL_SIZE" | tr -d '[:space:]')

# ------------------------------------------------------------------ family --
# Every name is checked against both families before anything is downloaded.

ONLY2="" ONLY3="" UNKNOWN="" AMBIGUOUS=""
rest=$MODEL_LIST,
while [ -n "$rest" ]; do
    name=${rest%%,*}
    rest=${rest#*,}
    [ -n "$name" ] || continue
    in2=no in3=no
    if lookup_model 2 "$name"; then in2=yes; fi
    if lookup_model 3 "$name"; then in3=yes; fi
    case $in2$in3 in
        yesyes) AMBIGUOUS="$AMBIGUOUS${AMBIGUOUS:+, }'$name'" ;;
        yesno) ONLY2="$ONLY2${ONLY2:+, }'$name'" ;;
        noyes) ONLY3="$ONLY3${ONLY3:+, }'$name'" ;;
        *) UNKNOWN="$UNKNOWN${UNKNOWN:+, }'$name'" ;;
    esac
done
[ -z "$UNKNOWN" ] ||
    die "unknown model name $UNKNOWN; choose from Llama 2: $LLAMA2_MODELS or Llama 3: $LLAMA3_MODELS (comma-separated, or empty for all)"

if [ "$FAMILY" = 2 ] && [ -n "$ONLY3" ]; then
    die "$ONLY3 is a Llama 3 model but LLAMA_FAMILY=2; choose from $LLAMA2_MODELS, or set LLAMA_FAMILY=3 if the URL is for Llama 3"
elif [ "$FAMILY" = 3 ] && [ -n "$ONLY2" ]; then
    die "$ONLY2 is a Llama 2 model but LLAMA_FAMILY=3; choose from $LLAMA3_MODELS, or set LLAMA_FAMILY=2 if the URL is for Llama 2"
elif [ -z "$FAMILY" ] && [ -n "$ONLY2" ] && [ -n "$ONLY3" ]; then
    die "the list mixes Llama 2 ($ONLY2) and Llama 3 ($ONLY3) models, but a presigned URL serves one family; download each family in its own run with its own URL"
elif [ -z "$FAMILY" ] && [ -n "$ONLY2" ]; then
    FAMILY=2
    echo "Llama family: 2 (from $ONLY2; set LLAMA_FAMILY to choose otherwise)"
elif [ -z "$FAMILY" ] && [ -n "$ONLY3" ]; then
    FAMILY=3
    echo "Llama family: 3 (from $ONLY3; set LLAMA_FAMILY to choose otherwise)"
elif [ -z "$FAMILY" ]; then
    # Only names both families have (70B), or none (= all): never guess,
    # since the other family's files are not behind this URL.
    if [ -n "$AMBIGUOUS" ]; then
        why="$AMBIGUOUS exists in both Llama 2 and Llama 3"
    else
        why="an empty list means all models of one family"
    fi
    if [ "$MODELS_ASKED" = yes ] || [ -t 0 ]; then
        read -r -p "Which family is the URL for ($why)? Enter 2 or 3: " FAMILY || true
        FAMILY=$(trim "$FAMILY")
        case $FAMILY in
            2 | 3) ;;
            '') die "no Llama family given ($why): answer 2 or 3, or set LLAMA_FAMILY=2 or LLAMA_FAMILY=3" ;;
            *) die "the Llama family must be 2 or 3, got '$FAMILY'" ;;
        esac
    else
        die "cannot tell the Llama family: $why; set LLAMA_FAMILY=2 or LLAMA_FAMILY=3 to match the presigned URL"
    fi
fi

# SELECTED holds "remote:local:shards" words in the order given, without duplicates.
[ -n "$MODEL_LIST" ] || MODEL_LIST=$(models_of "$FAMILY")
SELECTED=""
rest=$MODEL_LIST,
while [ -n "$rest" ]; do
    name=${rest%%,*}
    rest=${rest#*,}
    [ -n "$name" ] || continue
    lookup_model "$FAMILY" "$name" || die "internal error: '$name' is not a Llama $FAMILY model"
    case " $SELECTED " in
        *":$LOCAL_DIR:"*) ;;
        *) SELECTED="$SELECTED $REMOTE_DIR:$LOCAL_DIR:$SHARDS" ;;
    esac
done

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

# fetch REL [LOCAL]: download REL from the bucket to TARGET_FOLDER/LOCAL
# (default REL), resuming a partial file and retrying transient failures.
# Exits with an error otherwise.
fetch() {
    local rel=$1 local_rel=${2:-$1} dest url attempt=0 existed=0 reason
    dest=$TARGET_FOLDER/$local_rel
    url=$URL_HEAD$rel$URL_TAIL
    [ ! -e "$dest" ] || existed=1
    printf '  %s\n' "$local_rel"
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
                die "HTTP 404 Not Found: $rel is not at the presigned URL (check the URL, the model names, and that the URL is for Llama $FAMILY)"
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
if [ "$FAMILY" = 2 ]; then
    fetch USE_POLICY.md
    # Llama 2 has one tokenizer for all models, at the top.
    echo "Downloading tokenizer"
    fetch tokenizer.model
    fetch tokenizer_checklist.chk
    verify "" tokenizer_checklist.chk
else
    fetch USE_POLICY
fi

for entry in $SELECTED; do
    remote=${entry%%:*}
    entry=${entry#*:}
    dir=${entry%%:*}
    shards=${entry#*:}
    echo "Downloading $dir"
    mkdir -p "$TARGET_FOLDER/$dir" || die "cannot create folder $TARGET_FOLDER/$dir"
    s=0
    while [ "$s" -lt "$shards" ]; do
        shard=consolidated.$(printf '%02d' "$s").pth
        fetch "$remote/$shard" "$dir/$shard"
        s=$((s + 1))
    done
    fetch "$remote/params.json" "$dir/params.json"
    # Llama 3 keeps the tokenizer in each model folder; checklist.chk covers it.
    [ "$FAMILY" = 2 ] || fetch "$remote/tokenizer.model" "$dir/tokenizer.model"
    fetch "$remote/checklist.chk" "$dir/checklist.chk"
    verify "$dir" checklist.chk
done

echo "Done: all files downloaded and verified."
