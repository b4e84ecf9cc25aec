# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_relay_global_optspecs
    string join \n home= json h/help V/version
end

function __fish_relay_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_relay_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_relay_using_subcommand
    set -l cmd (__fish_relay_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c relay -n "__fish_relay_needs_command" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_needs_command" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c relay -n "__fish_relay_needs_command" -s V -l version -d 'Print version'
complete -c relay -n "__fish_relay_needs_command" -f -a "send" -d 'Send a message to every endpoint matching SUBJECT; prints its id'
complete -c relay -n "__fish_relay_needs_command" -f -a "recv" -d 'Claim the oldest message(s) of an endpoint (new/ -> cur/) and print them'
complete -c relay -n "__fish_relay_needs_command" -f -a "peek" -d 'List an endpoint\'s messages without claiming them (pending, claimed, failed)'
complete -c relay -n "__fish_relay_needs_command" -f -a "request" -d 'Send a message and wait for its reply (on a private reply endpoint); prints the reply'
complete -c relay -n "__fish_relay_needs_command" -f -a "ack" -d 'Acknowledge claimed messages: done, removed from cur/'
complete -c relay -n "__fish_relay_needs_command" -f -a "nack" -d 'Reject claimed messages: dead-lettered to failed/ with a reason'
complete -c relay -n "__fish_relay_needs_command" -f -a "endpoints" -d 'List, add or remove endpoints (mailboxes)'
complete -c relay -n "__fish_relay_needs_command" -f -a "status" -d 'One screen: endpoints and pressure, open breakers, limited senders, recent events'
complete -c relay -n "__fish_relay_needs_command" -f -a "breakers" -d 'Circuit breakers per (sender, endpoint) pair: list, reset, open'
complete -c relay -n "__fish_relay_needs_command" -f -a "limits" -d 'Per-sender rate limits: list, reset'
complete -c relay -n "__fish_relay_needs_command" -f -a "config" -d 'Show, read, change or check config.json'
complete -c relay -n "__fish_relay_needs_command" -f -a "trace" -d 'Every span of a message\'s trace: endpoint, status, sent/delivered/processed times'
complete -c relay -n "__fish_relay_needs_command" -f -a "metrics" -d 'Delivery metrics: counts, latency percentiles, rejections, per endpoint'
complete -c relay -n "__fish_relay_needs_command" -f -a "dlq" -d 'Dead letters: list, show, requeue, purge'
complete -c relay -n "__fish_relay_needs_command" -f -a "events" -d 'The event log (everything the bus decided); --follow streams it'
complete -c relay -n "__fish_relay_needs_command" -f -a "gc" -d 'Expire messages past their TTL, delete stale tmp/ files, prune old index rows, events and idle limits'
complete -c relay -n "__fish_relay_needs_command" -f -a "serve" -d 'Serve the read-only HTTP API, the live panel and Prometheus metrics'
complete -c relay -n "__fish_relay_needs_command" -f -a "mcp" -d 'MCP server on stdin/stdout: relay\'s tools for an agent, sending as SENDER'
complete -c relay -n "__fish_relay_needs_command" -f -a "doctor" -d 'Check the store against the Maildir; --repair makes the index agree with it'
complete -c relay -n "__fish_relay_needs_command" -f -a "bridge" -d 'Join this home to others through NATS JetStream (runs until SIGTERM)'
complete -c relay -n "__fish_relay_needs_command" -f -a "completions" -d 'Print the shell completion script for SHELL'
complete -c relay -n "__fish_relay_needs_command" -f -a "man" -d 'Print the man page, or write all pages (relay.1 and one per subcommand) into DIR'
complete -c relay -n "__fish_relay_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c relay -n "__fish_relay_using_subcommand send" -s f -l file -d 'Read the payload from a file' -r -F
complete -c relay -n "__fish_relay_using_subcommand send" -l from -d 'Sender subject (used by rate limits, breakers and access rules)' -r
complete -c relay -n "__fish_relay_using_subcommand send" -l reply-to -d 'Subject replies (and failure notices) should go to' -r
complete -c relay -n "__fish_relay_using_subcommand send" -l ttl -d 'Time to live, e.g. 30s, 5m, 1h30m (a bare number is seconds); the message expires after it [default: 1h, or the parent\'s]' -r
complete -c relay -n "__fish_relay_using_subcommand send" -l max-hops -d 'Maximum number of hops before the message is dead-lettered [default: 5, or the parent\'s]' -r
complete -c relay -n "__fish_relay_using_subcommand send" -l parent -d 'Continue from a received message (an envelope file as printed by `recv --json`): keep its trace and its spent budget (hops, chain, TTL, call budget). $RELAY_BUDGET (budget JSON) does the same for the budget' -r -F
complete -c relay -n "__fish_relay_using_subcommand send" -l idempotency-key -d 'Deliver at most once per key and sender within idempotency.windowSecs; a repeat prints the original id and delivers nothing' -r
complete -c relay -n "__fish_relay_using_subcommand send" -l retry -d 'On a temporary refusal (exit 75: rate limit, backpressure, open breaker, lock timeout), try again up to N more times, each after the refusal\'s retry-after plus 0-10% jitter (1s when it gives none), at most --retry-max-wait; each retry is reported on stderr (not with --batch, which reports each refused line)' -r
complete -c relay -n "__fish_relay_using_subcommand send" -l retry-max-wait -d 'The cap on each --retry wait' -r
complete -c relay -n "__fish_relay_using_subcommand send" -l trace-id -d 'Trace id to join [default: $RELAY_TRACE_ID, else the message id]' -r
complete -c relay -n "__fish_relay_using_subcommand send" -l priority -d 'Priority lane: recv hands out higher first; under backpressure low lanes are shed first and high ones may use reserved headroom' -r -f -a "critical\t'Must get through: may fill the whole headroom above capacity'
high\t'Urgent: may fill half the headroom above capacity'
normal\t'The default lane'
low\t'Shed when the mailbox reaches `shedLowAt` of capacity'
background\t'Shed first, at `shedBackgroundAt` of capacity'"
complete -c relay -n "__fish_relay_using_subcommand send" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand send" -l text -d 'Store the payload as a JSON string even if it parses as JSON'
complete -c relay -n "__fish_relay_using_subcommand send" -l json-payload -d 'The payload must be JSON: anything else is refused (exit 65) instead of being stored as a string'
complete -c relay -n "__fish_relay_using_subcommand send" -l batch -d 'Send many: one JSON request per stdin line ({"subject", "payload", "from"?, "replyTo"?, "ttl"?, "maxHops"?, "traceId"?, "priority"?, "idempotencyKey"?}; options here are the defaults), same checks per message, one group commit per chunk; prints one stdout line per input line, in order: the id, or `error CODE: MESSAGE` (with --json the report, or {"line", "error"})'
complete -c relay -n "__fish_relay_using_subcommand send" -l no-fsync -d 'Skip fsync (UNSAFE: a power loss or kernel crash can lose messages whose send reported success; a killed process cannot)'
complete -c relay -n "__fish_relay_using_subcommand send" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand send" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c relay -n "__fish_relay_using_subcommand recv" -s n -l count -d 'Claim up to N messages (printed one per line; NDJSON with --json)' -r
complete -c relay -n "__fish_relay_using_subcommand recv" -s w -l wait -d 'Block up to DURATION for a message when the mailbox is empty' -r
complete -c relay -n "__fish_relay_using_subcommand recv" -l lease -d 'Promise to ack or nack within DURATION [default: delivery.leaseSecs, 30m]; a claim held longer goes back to new/ for redelivery (its deliveryCount raised) and counts against the sender\'s breaker' -r
complete -c relay -n "__fish_relay_using_subcommand recv" -l exec -d 'Run CMD (with sh -c) per message: the envelope JSON on stdin and RELAY_MESSAGE_ID, RELAY_TRACE_ID, RELAY_BUDGET, ... in its environment; exit 0 acks, anything else nacks (and feeds the sender\'s breaker)' -r
complete -c relay -n "__fish_relay_using_subcommand recv" -l concurrency -d 'Handlers run at once with --exec' -r
complete -c relay -n "__fish_relay_using_subcommand recv" -l timeout -d 'Nack (and kill) a handler still running after DURATION' -r
complete -c relay -n "__fish_relay_using_subcommand recv" -l format -d 'Print each message as TEMPLATE instead of its payload, e.g. \'{id} {payload}\': placeholders {id}, {payload} (strings raw, other JSON on one line), {subject}, {endpoint}, {from}, {replyTo}, {traceId}, {createdAt}, {deliveryCount}, {priority}; {{ and }} are literal braces' -r
complete -c relay -n "__fish_relay_using_subcommand recv" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand recv" -s f -l follow -d 'Keep receiving: wait for new messages (filesystem notifications) until interrupted; SIGINT/SIGTERM finish the current message and stop. Without --exec each message is printed and acked, as with --ack (at-most-once); give --lease to keep the claims leased instead and ack or nack each yourself'
complete -c relay -n "__fish_relay_using_subcommand recv" -l ack -d 'Ack each message as soon as it is printed (at-most-once consumption)'
complete -c relay -n "__fish_relay_using_subcommand recv" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand recv" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand peek" -s n -l count -d 'List at most N messages, oldest first' -r
complete -c relay -n "__fish_relay_using_subcommand peek" -l status -d 'Which messages: pending (new/), claimed (cur/), failed (failed/, with their reasons) or all' -r -f -a "pending\t'`new/` only (the default, as DorkOS\'s inbox)'
claimed\t'`cur/` only'
failed\t'`failed/` only'
all\t'All three'"
complete -c relay -n "__fish_relay_using_subcommand peek" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand peek" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand peek" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c relay -n "__fish_relay_using_subcommand request" -s f -l file -d 'Read the payload from a file' -r -F
complete -c relay -n "__fish_relay_using_subcommand request" -l timeout -d 'How long to wait for the reply; past it relay exits 75' -r
complete -c relay -n "__fish_relay_using_subcommand request" -l from -d 'Sender subject (used by rate limits, breakers and access rules)' -r
complete -c relay -n "__fish_relay_using_subcommand request" -l ttl -d 'Time to live of the request [default: the timeout]' -r
complete -c relay -n "__fish_relay_using_subcommand request" -l trace-id -d 'Trace id to join [default: $RELAY_TRACE_ID, else the request\'s id]' -r
complete -c relay -n "__fish_relay_using_subcommand request" -l priority -d 'Priority lane of the request' -r -f -a "critical\t'Must get through: may fill the whole headroom above capacity'
high\t'Urgent: may fill half the headroom above capacity'
normal\t'The default lane'
low\t'Shed when the mailbox reaches `shedLowAt` of capacity'
background\t'Shed first, at `shedBackgroundAt` of capacity'"
complete -c relay -n "__fish_relay_using_subcommand request" -l retry -d 'When the request is refused for now (exit 75: rate limit, backpressure, open breaker, lock timeout), send it again up to N more times, each after the refusal\'s retry-after plus 0-10% jitter, at most --retry-max-wait; never once it was sent (no reply within --timeout is not retried); each retry is reported on stderr' -r
complete -c relay -n "__fish_relay_using_subcommand request" -l retry-max-wait -d 'The cap on each --retry wait' -r
complete -c relay -n "__fish_relay_using_subcommand request" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand request" -l text -d 'Store the payload as a JSON string even if it parses as JSON'
complete -c relay -n "__fish_relay_using_subcommand request" -l json-payload -d 'The payload must be JSON: anything else is refused (exit 65) instead of being stored as a string'
complete -c relay -n "__fish_relay_using_subcommand request" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand request" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c relay -n "__fish_relay_using_subcommand ack" -l delivery-count -d 'The deliveryCount the claim had (as recv --json printed it): refused if the message was redelivered since' -r
complete -c relay -n "__fish_relay_using_subcommand ack" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand ack" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand ack" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand nack" -l reason -d 'Why the message failed (kept in the dead letter\'s reason sidecar)' -r
complete -c relay -n "__fish_relay_using_subcommand nack" -l delivery-count -d 'The deliveryCount the claim had (as recv --json printed it): refused if the message was redelivered since' -r
complete -c relay -n "__fish_relay_using_subcommand nack" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand nack" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand nack" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and not __fish_seen_subcommand_from list add remove help" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand endpoints; and not __fish_seen_subcommand_from list add remove help" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and not __fish_seen_subcommand_from list add remove help" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and not __fish_seen_subcommand_from list add remove help" -f -a "list" -d 'List endpoints with their depth (new/cur/failed) and last activity'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and not __fish_seen_subcommand_from list add remove help" -f -a "add" -d 'Register endpoints: create mailboxes/<SUBJECT>/{tmp,new,cur,failed}'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and not __fish_seen_subcommand_from list add remove help" -f -a "remove" -d 'Remove an endpoint and its mailbox'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and not __fish_seen_subcommand_from list add remove help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and __fish_seen_subcommand_from list" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand endpoints; and __fish_seen_subcommand_from list" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and __fish_seen_subcommand_from add" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand endpoints; and __fish_seen_subcommand_from add" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and __fish_seen_subcommand_from remove" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand endpoints; and __fish_seen_subcommand_from remove" -l force -d 'Remove it even if it still holds messages (they are deleted)'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and __fish_seen_subcommand_from remove" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and __fish_seen_subcommand_from help" -f -a "list" -d 'List endpoints with their depth (new/cur/failed) and last activity'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and __fish_seen_subcommand_from help" -f -a "add" -d 'Register endpoints: create mailboxes/<SUBJECT>/{tmp,new,cur,failed}'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Remove an endpoint and its mailbox'
complete -c relay -n "__fish_relay_using_subcommand endpoints; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c relay -n "__fish_relay_using_subcommand status" -l events -d 'How many recent events to show' -r
complete -c relay -n "__fish_relay_using_subcommand status" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand status" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand status" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand breakers; and not __fish_seen_subcommand_from list reset open help" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand breakers; and not __fish_seen_subcommand_from list reset open help" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand breakers; and not __fish_seen_subcommand_from list reset open help" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand breakers; and not __fish_seen_subcommand_from list reset open help" -f -a "list" -d 'List every breaker that has state'
complete -c relay -n "__fish_relay_using_subcommand breakers; and not __fish_seen_subcommand_from list reset open help" -f -a "reset" -d 'Close breakers and clear their counters'
complete -c relay -n "__fish_relay_using_subcommand breakers; and not __fish_seen_subcommand_from list reset open help" -f -a "open" -d 'Open a breaker by hand (maintenance): sends on the pair are refused'
complete -c relay -n "__fish_relay_using_subcommand breakers; and not __fish_seen_subcommand_from list reset open help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from list" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from list" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from reset" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from reset" -l all -d 'Reset every breaker'
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from reset" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from reset" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from open" -l for -d 'How long before it half-opens [default: the configured cooldown]' -r
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from open" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from open" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from open" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from help" -f -a "list" -d 'List every breaker that has state'
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from help" -f -a "reset" -d 'Close breakers and clear their counters'
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from help" -f -a "open" -d 'Open a breaker by hand (maintenance): sends on the pair are refused'
complete -c relay -n "__fish_relay_using_subcommand breakers; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c relay -n "__fish_relay_using_subcommand limits; and not __fish_seen_subcommand_from list reset help" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand limits; and not __fish_seen_subcommand_from list reset help" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand limits; and not __fish_seen_subcommand_from list reset help" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand limits; and not __fish_seen_subcommand_from list reset help" -f -a "list" -d 'List every sender with a rate-limit bucket'
complete -c relay -n "__fish_relay_using_subcommand limits; and not __fish_seen_subcommand_from list reset help" -f -a "reset" -d 'Refill senders\' buckets (forget their state and hit counts)'
complete -c relay -n "__fish_relay_using_subcommand limits; and not __fish_seen_subcommand_from list reset help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c relay -n "__fish_relay_using_subcommand limits; and __fish_seen_subcommand_from list" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand limits; and __fish_seen_subcommand_from list" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand limits; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand limits; and __fish_seen_subcommand_from reset" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand limits; and __fish_seen_subcommand_from reset" -l all -d 'Reset every sender'
complete -c relay -n "__fish_relay_using_subcommand limits; and __fish_seen_subcommand_from reset" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand limits; and __fish_seen_subcommand_from reset" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand limits; and __fish_seen_subcommand_from help" -f -a "list" -d 'List every sender with a rate-limit bucket'
complete -c relay -n "__fish_relay_using_subcommand limits; and __fish_seen_subcommand_from help" -f -a "reset" -d 'Refill senders\' buckets (forget their state and hit counts)'
complete -c relay -n "__fish_relay_using_subcommand limits; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c relay -n "__fish_relay_using_subcommand config; and not __fish_seen_subcommand_from show get set validate path help" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand config; and not __fish_seen_subcommand_from show get set validate path help" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand config; and not __fish_seen_subcommand_from show get set validate path help" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand config; and not __fish_seen_subcommand_from show get set validate path help" -f -a "show" -d 'Every setting with its effective value and where it came from'
complete -c relay -n "__fish_relay_using_subcommand config; and not __fish_seen_subcommand_from show get set validate path help" -f -a "get" -d 'Print one setting\'s effective value (JSON)'
complete -c relay -n "__fish_relay_using_subcommand config; and not __fish_seen_subcommand_from show get set validate path help" -f -a "set" -d 'Change one setting in config.json (validated, written atomically)'
complete -c relay -n "__fish_relay_using_subcommand config; and not __fish_seen_subcommand_from show get set validate path help" -f -a "validate" -d 'Check a config file (the home\'s by default): a bad value fails, an unknown key warns'
complete -c relay -n "__fish_relay_using_subcommand config; and not __fish_seen_subcommand_from show get set validate path help" -f -a "path" -d 'Print the path of config.json'
complete -c relay -n "__fish_relay_using_subcommand config; and not __fish_seen_subcommand_from show get set validate path help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from show" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from show" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from get" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from get" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from set" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from set" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from set" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from validate" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from validate" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from validate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from path" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from path" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from path" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "show" -d 'Every setting with its effective value and where it came from'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "get" -d 'Print one setting\'s effective value (JSON)'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "set" -d 'Change one setting in config.json (validated, written atomically)'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "validate" -d 'Check a config file (the home\'s by default): a bad value fails, an unknown key warns'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "path" -d 'Print the path of config.json'
complete -c relay -n "__fish_relay_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c relay -n "__fish_relay_using_subcommand trace" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand trace" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand trace" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand metrics" -l since -d 'Only messages sent within this window, e.g. 1h, 7d [default: all history]' -r
complete -c relay -n "__fish_relay_using_subcommand metrics" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand metrics" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand metrics" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand dlq; and not __fish_seen_subcommand_from list show requeue purge help" -l endpoint -d 'Only dead letters of this endpoint (or dead-letter directory)' -r
complete -c relay -n "__fish_relay_using_subcommand dlq; and not __fish_seen_subcommand_from list show requeue purge help" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand dlq; and not __fish_seen_subcommand_from list show requeue purge help" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand dlq; and not __fish_seen_subcommand_from list show requeue purge help" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand dlq; and not __fish_seen_subcommand_from list show requeue purge help" -f -a "list" -d 'List dead letters: id, endpoint, code, reason, when'
complete -c relay -n "__fish_relay_using_subcommand dlq; and not __fish_seen_subcommand_from list show requeue purge help" -f -a "show" -d 'Show a dead letter\'s envelope and reason'
complete -c relay -n "__fish_relay_using_subcommand dlq; and not __fish_seen_subcommand_from list show requeue purge help" -f -a "requeue" -d 'Put dead letters back into new/ (ids and trace kept)'
complete -c relay -n "__fish_relay_using_subcommand dlq; and not __fish_seen_subcommand_from list show requeue purge help" -f -a "purge" -d 'Delete dead letters older than a given age'
complete -c relay -n "__fish_relay_using_subcommand dlq; and not __fish_seen_subcommand_from list show requeue purge help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from list" -l endpoint -d 'Only dead letters of this endpoint (or dead-letter directory)' -r
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from list" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from list" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from show" -l endpoint -d 'Only dead letters of this endpoint (or dead-letter directory)' -r
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from show" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from show" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from requeue" -l endpoint -d 'Only dead letters of this endpoint (or dead-letter directory)' -r
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from requeue" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from requeue" -l all -d 'Requeue every dead letter (of --endpoint, if given)'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from requeue" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from requeue" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from purge" -l older-than -d 'Age, e.g. 7d, 12h' -r
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from purge" -l endpoint -d 'Only dead letters of this endpoint (or dead-letter directory)' -r
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from purge" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from purge" -s y -l yes -d 'Do not ask for confirmation'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from purge" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from purge" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from help" -f -a "list" -d 'List dead letters: id, endpoint, code, reason, when'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from help" -f -a "show" -d 'Show a dead letter\'s envelope and reason'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from help" -f -a "requeue" -d 'Put dead letters back into new/ (ids and trace kept)'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from help" -f -a "purge" -d 'Delete dead letters older than a given age'
complete -c relay -n "__fish_relay_using_subcommand dlq; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c relay -n "__fish_relay_using_subcommand events" -l since -d 'Only events within this window, e.g. 10m [default: the last 50]' -r
complete -c relay -n "__fish_relay_using_subcommand events" -l kind -d 'Only events of this kind (repeatable), e.g. breaker_opened' -r
complete -c relay -n "__fish_relay_using_subcommand events" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand events" -s f -l follow -d 'Keep printing new events as they happen (NDJSON with --json)'
complete -c relay -n "__fish_relay_using_subcommand events" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand events" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand gc" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand gc" -l dry-run -d 'Report what would be done, change nothing'
complete -c relay -n "__fish_relay_using_subcommand gc" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand gc" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand serve" -l listen -d 'Address and port to listen on' -r
complete -c relay -n "__fish_relay_using_subcommand serve" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand serve" -l allow-remote -d 'Serve other hosts: allow a non-loopback address and any Host name (no DNS-rebinding check); requires RELAY_SERVE_TOKEN, which every request must then present (Authorization: Bearer TOKEN, or ?token=)'
complete -c relay -n "__fish_relay_using_subcommand serve" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand serve" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand mcp" -l as -d 'The agent\'s identity: the sender of every message it sends and the owner of the endpoints it registers (never a tool argument)' -r
complete -c relay -n "__fish_relay_using_subcommand mcp" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand mcp" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand mcp" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand doctor" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand doctor" -l repair -d 'Fix what can be fixed: rebuild index rows from the Maildir, move a damaged relay.db aside, quarantine unreadable files, delete stale tmp/ files, remove world-write permission. Never deletes a message'
complete -c relay -n "__fish_relay_using_subcommand doctor" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand bridge" -l nats -d 'NATS server URL (comma-separated for a cluster) [default: config bridge.url, then nats://127.0.0.1:4222]' -r
complete -c relay -n "__fish_relay_using_subcommand bridge" -l host -d 'This host\'s name in the directory (letters, digits, \'-\', \'_\') [default: config bridge.host]' -r
complete -c relay -n "__fish_relay_using_subcommand bridge" -l replicas -d 'Replicas of the stream and the directory bucket (3 on a three-node cluster) [default: config bridge.replicas, then 1]' -r
complete -c relay -n "__fish_relay_using_subcommand bridge" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand bridge" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand bridge" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand completions" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand completions" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand completions" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand man" -l out -d 'Directory to write relay.1 and relay-SUBCOMMAND.1 into' -r -F
complete -c relay -n "__fish_relay_using_subcommand man" -l home -d 'Relay home directory [default: $RELAY_HOME, else ~/.dork/relay]' -r -F
complete -c relay -n "__fish_relay_using_subcommand man" -l json -d 'Print machine-readable JSON (NDJSON for streams) instead of text'
complete -c relay -n "__fish_relay_using_subcommand man" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "send" -d 'Send a message to every endpoint matching SUBJECT; prints its id'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "recv" -d 'Claim the oldest message(s) of an endpoint (new/ -> cur/) and print them'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "peek" -d 'List an endpoint\'s messages without claiming them (pending, claimed, failed)'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "request" -d 'Send a message and wait for its reply (on a private reply endpoint); prints the reply'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "ack" -d 'Acknowledge claimed messages: done, removed from cur/'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "nack" -d 'Reject claimed messages: dead-lettered to failed/ with a reason'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "endpoints" -d 'List, add or remove endpoints (mailboxes)'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "status" -d 'One screen: endpoints and pressure, open breakers, limited senders, recent events'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "breakers" -d 'Circuit breakers per (sender, endpoint) pair: list, reset, open'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "limits" -d 'Per-sender rate limits: list, reset'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "config" -d 'Show, read, change or check config.json'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "trace" -d 'Every span of a message\'s trace: endpoint, status, sent/delivered/processed times'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "metrics" -d 'Delivery metrics: counts, latency percentiles, rejections, per endpoint'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "dlq" -d 'Dead letters: list, show, requeue, purge'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "events" -d 'The event log (everything the bus decided); --follow streams it'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "gc" -d 'Expire messages past their TTL, delete stale tmp/ files, prune old index rows, events and idle limits'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "serve" -d 'Serve the read-only HTTP API, the live panel and Prometheus metrics'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "mcp" -d 'MCP server on stdin/stdout: relay\'s tools for an agent, sending as SENDER'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "doctor" -d 'Check the store against the Maildir; --repair makes the index agree with it'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "bridge" -d 'Join this home to others through NATS JetStream (runs until SIGTERM)'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "completions" -d 'Print the shell completion script for SHELL'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "man" -d 'Print the man page, or write all pages (relay.1 and one per subcommand) into DIR'
complete -c relay -n "__fish_relay_using_subcommand help; and not __fish_seen_subcommand_from send recv peek request ack nack endpoints status breakers limits config trace metrics dlq events gc serve mcp doctor bridge completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from endpoints" -f -a "list" -d 'List endpoints with their depth (new/cur/failed) and last activity'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from endpoints" -f -a "add" -d 'Register endpoints: create mailboxes/<SUBJECT>/{tmp,new,cur,failed}'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from endpoints" -f -a "remove" -d 'Remove an endpoint and its mailbox'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from breakers" -f -a "list" -d 'List every breaker that has state'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from breakers" -f -a "reset" -d 'Close breakers and clear their counters'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from breakers" -f -a "open" -d 'Open a breaker by hand (maintenance): sends on the pair are refused'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from limits" -f -a "list" -d 'List every sender with a rate-limit bucket'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from limits" -f -a "reset" -d 'Refill senders\' buckets (forget their state and hit counts)'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "show" -d 'Every setting with its effective value and where it came from'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "get" -d 'Print one setting\'s effective value (JSON)'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "set" -d 'Change one setting in config.json (validated, written atomically)'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "validate" -d 'Check a config file (the home\'s by default): a bad value fails, an unknown key warns'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "path" -d 'Print the path of config.json'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from dlq" -f -a "list" -d 'List dead letters: id, endpoint, code, reason, when'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from dlq" -f -a "show" -d 'Show a dead letter\'s envelope and reason'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from dlq" -f -a "requeue" -d 'Put dead letters back into new/ (ids and trace kept)'
complete -c relay -n "__fish_relay_using_subcommand help; and __fish_seen_subcommand_from dlq" -f -a "purge" -d 'Delete dead letters older than a given age'
