-- wrk script: durable PUTs of 256-byte values over 10,000 distinct 16-byte keys.
-- wrk -t2 -c64 -d20s -s benches/wrk-put.lua http://127.0.0.1:12380
local value = string.rep("v", 256)
local counter = 0
request = function()
  counter = counter + 1
  local key = string.format("key-%011d", (counter * 7919) % 10000)
  return wrk.format("PUT", "/kv/" .. key, nil, value)
end
