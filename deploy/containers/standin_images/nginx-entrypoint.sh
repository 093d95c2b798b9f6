#!/bin/sh
# The official nginx image's 20-envsubst-on-templates.sh, in short: each
# $NGINX_ENVSUBST_TEMPLATE_DIR/*.template becomes a file in $NGINX_ENVSUBST_OUTPUT_DIR, with
# only the environment variables matching $NGINX_ENVSUBST_FILTER substituted.
set -eu
template_dir=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
output_dir=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
filter=${NGINX_ENVSUBST_FILTER:-}
if [ "${1:-}" = nginx ] && [ -d "$template_dir" ] && [ -w "$output_dir" ]; then
  names=$(awk "END { for (name in ENVIRON) { if (name ~ /${filter}/) print name } }" </dev/null)
  defined=""
  for name in $names; do defined="$defined \${$name}"; done
  find "$template_dir" -follow -type f -name "*$suffix" | while read -r template; do
    relative=${template#"$template_dir/"}
    output="$output_dir/${relative%"$suffix"}"
    mkdir -p "$(dirname "$output")"
    envsubst "$defined" <"$template" >"$output"
    echo "$0: rendered $template to $output"
  done
fi
exec "$@"
