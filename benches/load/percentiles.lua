-- wrk script: print exact latency percentiles and the request count in a parseable form.
done = function(summary, latency, requests)
  for _, p in pairs({ 50, 99, 99.9 }) do
    io.write(string.format("p%s %.3fms\n", p, latency:percentile(p) / 1000))
  end
  io.write(string.format("requests %d\n", summary.requests))
end
