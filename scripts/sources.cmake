# p11tls-tool's sources (relative to scripts/), shared by the main build and the fuzz
# build (tests/fuzz), so that a new file is added in one place.
set(P11TLS_TOOL_SOURCES p11tls-tool.c tool_check.c tool_backup.c tool_info.c tool_import.c)
