-- wrk script: one wallet command per request, each with its own idempotency key, users spread
-- over a fixed set (or, KIND balance, a balance read of one of them).
-- Usage: wrk -s benchmarks/http_load.lua URL -- KIND USERS AMOUNT [API]
--   KIND: topup | bonus | spend | balance; USERS: how many users (http-0 .. http-N-1); AMOUNT: minor units
--   API: wallet (this service, the default) | express (the Express wallet this one replaces:
--   POST /KIND {"ownerId", "amount", "idempotencyKey": a UUID}, 400 "Insufficient..." declined)
-- Prints the status counts and the latency p50/p99 at the end.
local threads = {}

function setup(thread)
    thread:set("id", #threads)
    table.insert(threads, thread)
end

function init(args)
    kind = args[1] or "spend"
    users = tonumber(args[2] or "1000")
    amount = args[3] or "1"
    api = args[4] or "wallet"
    math.randomseed(os.time() + id * 7919)
    run = string.format("%d-%d", os.time(), math.random(1, 1000000000))
    sent = 0
    ok, declined, late, other = 0, 0, 0, 0
    if kind ~= "balance" then
        wrk.method = "POST"
        wrk.headers["Content-Type"] = "application/json"
    end
end

local function uuid4()
    local r = math.random
    return string.format("%04x%04x-%04x-4%03x-%04x-%04x%04x%04x", r(0, 65535), r(0, 65535),
        r(0, 65535), r(0, 4095), 32768 + r(0, 16383), r(0, 65535), r(0, 65535), r(0, 65535))
end

function request()
    sent = sent + 1
    local user = (sent * 7919 + id * 104729) % users
    if kind == "balance" and api == "express" then
        return wrk.format(nil, string.format("/balance/http-%d", user))
    elseif kind == "balance" then
        return wrk.format(nil, string.format("/wallet/http-%d/balance", user))
    elseif api == "express" then
        local body = string.format('{"ownerId":"http-%d","amount":%s,"idempotencyKey":"%s"}',
            user, amount, uuid4())
        return wrk.format(nil, "/" .. kind, nil, body)
    end
    local body = string.format(
        '{"userId":"http-%d","assetId":"GOLD","amount":%s,"idempotencyKey":"wrk-%s-%d-%d"}',
        user, amount, run, id, sent)
    return wrk.format(nil, "/wallet/" .. kind, nil, body)
end

function response(status, headers, body)
    if status == 201 or status == 200 then ok = ok + 1
    elseif status == 402 then declined = declined + 1
    elseif status == 400 and body:find("Insufficient") then declined = declined + 1
    elseif status == 202 then late = late + 1
    else other = other + 1 end
end

function done(summary, latency, requests)
    local counts = {ok = 0, declined = 0, late = 0, other = 0}
    for _, thread in ipairs(threads) do
        for name, _ in pairs(counts) do counts[name] = counts[name] + thread:get(name) end
    end
    io.write(string.format("statuses: ok=%d declined(402)=%d late(202)=%d other=%d\n",
        counts.ok, counts.declined, counts.late, counts.other))
    io.write(string.format("latency: p50 %.1f ms, p99 %.1f ms\n",
        latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
