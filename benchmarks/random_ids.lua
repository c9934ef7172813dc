-- wrk script: each request calls hello on a random actor among ids 1..RANDOM_IDS.
local ids = tonumber(os.getenv("RANDOM_IDS") or "10000")
math.randomseed(os.time())

request = function()
  return wrk.format("GET", "/invoke/" .. math.random(1, ids) .. "/hello")
end
