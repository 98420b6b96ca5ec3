// The benchmark's load generator: signed webhook requests or SMTP mails, from many clients at once.
//
// Compiled, so that driving the servers takes little of the two cores they share with it,
// and the same for every server measured. The bodies (JSON complaints or whole mails) come
// from a file written by bench/intake_bench.py, so what is sent is defined in one place;
// this program only signs, sends, times and reports. Standard library only.
//
// Input file: each body as a 4-byte big-endian length followed by its bytes.
// Output (stdout): one JSON object with the latency of every answered request, in order of
// completion, the wall-clock start and end, and the count of each status.
package main

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/smtp"
	"os"
	"strconv"
	"sync"
	"time"
)

type report struct {
	Started    float64        `json:"started"` // Unix seconds, wall clock: the Python side compares with time.time()
	Finished   float64        `json:"finished"`
	LastAnswer float64        `json:"last_answer"`
	Latencies  []float64      `json:"latencies"` // seconds, answered with the expected status only
	Statuses   map[string]int `json:"statuses"`
	Errors     []string       `json:"errors"`
}

func readBodies(path string) [][]byte {
	file, err := os.Open(path)
	if err != nil {
		panic(err)
	}
	defer file.Close()
	reader := bufio.NewReader(file)
	var bodies [][]byte
	for {
		var size uint32
		if err := binary.Read(reader, binary.BigEndian, &size); err == io.EOF {
			return bodies
		} else if err != nil {
			panic(err)
		}
		body := make([]byte, size)
		if _, err := io.ReadFull(reader, body); err != nil {
			panic(err)
		}
		bodies = append(bodies, body)
	}
}

func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

type collector struct {
	mu   sync.Mutex
	rep  report
	last time.Time
}

func (c *collector) done(status string, ok bool, latency time.Duration, err error) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rep.Statuses[status]++
	if ok {
		c.rep.Latencies = append(c.rep.Latencies, latency.Seconds())
		if now.After(c.last) {
			c.last = now
		}
	}
	if err != nil && len(c.rep.Errors) < 20 {
		c.rep.Errors = append(c.rep.Errors, err.Error())
	}
}

// schedule hands out request numbers: as fast as the clients take them, or at a fixed rate
// (open loop: a request's latency counts from when it was due, so a slow server cannot hide
// its queue by slowing the generator down).
func schedule(count int, rate float64) <-chan [2]int64 {
	jobs := make(chan [2]int64, count)
	go func() {
		start := time.Now()
		for n := 0; n < count; n++ {
			due := start
			if rate > 0 {
				due = start.Add(time.Duration(float64(n) / rate * float64(time.Second)))
				if wait := time.Until(due); wait > 0 {
					time.Sleep(wait)
				}
			} else {
				due = time.Now()
			}
			jobs <- [2]int64{int64(n), due.UnixNano()}
		}
		close(jobs)
	}()
	return jobs
}

func webhook(url, secret, keyPrefix string, bodies [][]byte, count, clients int, rate float64, c *collector) {
	transport := &http.Transport{MaxIdleConns: clients, MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients, DisableCompression: true}
	client := &http.Client{Transport: transport, Timeout: 120 * time.Second}
	jobs := schedule(count, rate)
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for job := range jobs {
				n := int(job[0])
				body := bodies[n%len(bodies)]
				stamp := strconv.FormatInt(time.Now().Unix(), 10)
				key := fmt.Sprintf("%s-%d", keyPrefix, n)
				// Version 2 of the signature: HMAC-SHA256 of <timestamp>.<Idempotency-Key>.<body>.
				mac := hmac.New(sha256.New, []byte(secret))
				mac.Write([]byte(stamp + "." + key + "."))
				mac.Write(body)
				request, _ := http.NewRequest("POST", url, bytesReader(body))
				request.Header.Set("Content-Type", "application/json")
				request.Header.Set("Intake-Timestamp", stamp)
				request.Header.Set("Intake-Signature", "v2="+hex.EncodeToString(mac.Sum(nil)))
				request.Header.Set("Idempotency-Key", key)
				began := time.Unix(0, job[1])
				if rate <= 0 {
					began = time.Now()
				}
				response, err := client.Do(request)
				if err != nil {
					c.done("error", false, 0, err)
					continue
				}
				io.Copy(io.Discard, response.Body)
				response.Body.Close()
				c.done(strconv.Itoa(response.StatusCode), response.StatusCode == 202, time.Since(began), nil)
			}
		}()
	}
	wg.Wait()
}

type bodyReader struct {
	body []byte
	at   int
}

func (r *bodyReader) Read(p []byte) (int, error) {
	if r.at >= len(r.body) {
		return 0, io.EOF
	}
	n := copy(p, r.body[r.at:])
	r.at += n
	return n, nil
}

func bytesReader(body []byte) io.Reader { return &bodyReader{body: body} }

// mailer sends its share of the mails on one connection, as an MTA does.
func mailer(address string, mails [][]byte, share []int, from, to string, c *collector) {
	client, err := smtp.Dial(address)
	if err != nil {
		for range share {
			c.done("error", false, 0, err)
		}
		return
	}
	defer client.Close()
	if err := client.Hello("loadgen.bench.test"); err != nil {
		c.done("error", false, 0, err)
		return
	}
	for _, n := range share {
		began := time.Now()
		err := func() error {
			if err := client.Mail(fmt.Sprintf(from, n)); err != nil {
				return err
			}
			if err := client.Rcpt(to); err != nil {
				return err
			}
			writer, err := client.Data()
			if err != nil {
				return err
			}
			if _, err := writer.Write(mails[n%len(mails)]); err != nil {
				return err
			}
			return writer.Close() // returns once the server has answered the final dot
		}()
		if err != nil {
			c.done("error", false, 0, err)
			client.Reset()
			continue
		}
		c.done("250", true, time.Since(began), nil)
	}
	client.Quit()
}

func main() {
	mode := flag.String("mode", "webhook", "webhook or smtp")
	target := flag.String("target", "", "webhook: the URL to POST to; smtp: host:port")
	bodiesPath := flag.String("bodies", "", "file of length-prefixed bodies")
	count := flag.Int("count", 1000, "requests or mails to send")
	clients := flag.Int("clients", 64, "concurrent connections")
	rate := flag.Float64("rate", 0, "webhook: requests per second (open loop); 0: as fast as answered")
	secret := flag.String("secret", "", "webhook: the partner's HMAC secret")
	keyPrefix := flag.String("key-prefix", "bench", "webhook: Idempotency-Key prefix; the request number follows")
	from := flag.String("from", "customer%d@bench.test", "smtp: MAIL FROM, with %d for the mail's number")
	to := flag.String("to", "complaints@example.test", "smtp: RCPT TO")
	flag.Parse()

	bodies := readBodies(*bodiesPath)
	c := &collector{rep: report{Statuses: map[string]int{}, Latencies: make([]float64, 0, *count), Errors: []string{}}}
	started := time.Now()
	c.rep.Started = unix(started)
	switch *mode {
	case "webhook":
		webhook(*target, *secret, *keyPrefix, bodies, *count, *clients, *rate, c)
	case "smtp":
		var wg sync.WaitGroup
		for i := 0; i < *clients; i++ {
			var share []int
			for n := i; n < *count; n += *clients {
				share = append(share, n)
			}
			if len(share) == 0 {
				continue
			}
			wg.Add(1)
			go func(share []int) {
				defer wg.Done()
				mailer(*target, bodies, share, *from, *to, c)
			}(share)
		}
		wg.Wait()
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", *mode)
		os.Exit(2)
	}
	c.rep.Finished = unix(time.Now())
	c.rep.LastAnswer = unix(c.last)
	if err := json.NewEncoder(os.Stdout).Encode(c.rep); err != nil {
		panic(err)
	}
}
