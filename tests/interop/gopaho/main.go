// Eclipse Paho's Go client (Debian's golang-github-eclipse-paho.mqtt.golang-dev) against a
// broker on 127.0.0.1:PORT, as a gateway or a Go service of a fleet would use it.
//
//	gopaho scenarios PORT   runs each scenario, printing one JSON line per scenario:
//	                        {"name": ..., "ok": true|false, "detail": ...}
//	gopaho hold-will PORT   connects with a will on go/will/gateway, prints "connected" and
//	                        waits to be killed
//	gopaho ws PORT          over MQTT over WebSocket (ws://127.0.0.1:PORT/mqtt, golang.org/x/net's
//	                        websocket): 100 QoS 1 requests reach a gate in order, as one JSON line
//	gopaho tls PORT CA [CERT KEY]
//	                        over TLS (Go's crypto/tls), the server's certificate checked
//	                        against CA, with a client certificate when given: a QoS 1 request
//	                        reaches a gate, printed as one JSON line like a scenario's
//
// Every wait is bounded (tokens with timeouts, channels with deadlines).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// How long any one expected event may take.
const wait = 10 * time.Second

// The broker's URL (tcp://, ws:// or ssl://), from the command line.
var broker string

// options for a client of the broker, 3.1.1, that neither reconnects nor waits unbounded.
func options(id string, clean bool) *mqtt.ClientOptions {
	return mqtt.NewClientOptions().
		AddBroker(broker).
		SetClientID(id).
		SetCleanSession(clean).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectTimeout(wait).
		SetWriteTimeout(wait)
}

// connect connects a client and waits for its CONNACK.
func connect(o *mqtt.ClientOptions) (mqtt.Client, error) {
	c := mqtt.NewClient(o)
	t := c.Connect()
	if !t.WaitTimeout(wait) {
		return nil, fmt.Errorf("%s: no CONNACK", o.ClientID)
	}
	return c, t.Error()
}

// done waits for a token (SUBACK, PUBACK, PUBCOMP, or a QoS 0 write) and says what failed.
func done(t mqtt.Token, what string) error {
	if !t.WaitTimeout(wait) {
		return fmt.Errorf("%s: timed out", what)
	}
	if t.Error() != nil {
		return fmt.Errorf("%s: %v", what, t.Error())
	}
	return nil
}

// received collects the payloads of the messages a handler gets, in arrival order.
type received struct {
	mu       sync.Mutex
	payloads []string
	retained []bool
	qos      []byte
	more     chan struct{}
}

func newReceived() *received { return &received{more: make(chan struct{}, 1)} }

func (r *received) handler(_ mqtt.Client, m mqtt.Message) {
	r.mu.Lock()
	r.payloads = append(r.payloads, string(m.Payload()))
	r.retained = append(r.retained, m.Retained())
	r.qos = append(r.qos, m.Qos())
	r.mu.Unlock()
	select {
	case r.more <- struct{}{}:
	default:
	}
}

// until waits for n messages; the payloads so far either way.
func (r *received) until(n int) ([]string, error) {
	deadline := time.After(wait)
	for {
		r.mu.Lock()
		got := append([]string(nil), r.payloads...)
		r.mu.Unlock()
		if len(got) >= n {
			return got, nil
		}
		select {
		case <-r.more:
		case <-deadline:
			return got, fmt.Errorf("%d of %d messages arrived", len(got), n)
		}
	}
}

// expectOne waits for one message and checks that it is want.
func (r *received) expectOne(want string) error {
	got, err := r.until(1)
	if err != nil {
		return err
	}
	if got[0] != want {
		return fmt.Errorf("got %q, expected %q", got[0], want)
	}
	return nil
}

// numbered checks that payloads are prefix0 .. prefix(n-1), once each, in order.
func numbered(payloads []string, prefix string, n int) error {
	if len(payloads) != n {
		return fmt.Errorf("%d messages, expected %d", len(payloads), n)
	}
	for i, p := range payloads {
		if p != prefix+strconv.Itoa(i) {
			return fmt.Errorf("message %d is %q, expected %q", i, p, prefix+strconv.Itoa(i))
		}
	}
	return nil
}

// stopAndWait: each QoS publish waited for (PUBACK, or PUBCOMP), as a device publishes.
func stopAndWait(qos byte) func() error {
	return func() error {
		topic := fmt.Sprintf("go/stream/%d", qos)
		r := newReceived()
		sub, err := connect(options(fmt.Sprintf("go-sub-%d", qos), true))
		if err != nil {
			return err
		}
		defer sub.Disconnect(100)
		if err := done(sub.Subscribe(topic, qos, r.handler), "subscribe"); err != nil {
			return err
		}
		pub, err := connect(options(fmt.Sprintf("go-pub-%d", qos), true))
		if err != nil {
			return err
		}
		defer pub.Disconnect(100)
		for i := 0; i < 300; i++ {
			if err := done(pub.Publish(topic, qos, false, "m"+strconv.Itoa(i)), "publish"); err != nil {
				return err
			}
		}
		got, err := r.until(300)
		if err != nil {
			return err
		}
		for i, q := range r.qos {
			if q != qos {
				return fmt.Errorf("message %d came at QoS %d", i, q)
			}
		}
		return numbered(got, "m", 300)
	}
}

// keptSession: a subscriber with CleanSession false goes away; QoS 1 and 2 messages published
// meanwhile come when it connects again, without subscribing again.
func keptSession() error {
	first := newReceived()
	o := options("go-kept", false).SetDefaultPublishHandler(first.handler)
	sub, err := connect(o)
	if err != nil {
		return err
	}
	if err := done(sub.Subscribe("go/kept/#", 2, first.handler), "subscribe"); err != nil {
		return err
	}
	sub.Disconnect(100)
	pub, err := connect(options("go-kept-pub", true))
	if err != nil {
		return err
	}
	defer pub.Disconnect(100)
	for i := 0; i < 100; i++ {
		qos := byte(1 + i%2)
		if err := done(pub.Publish("go/kept/a", qos, false, "k"+strconv.Itoa(i)), "publish"); err != nil {
			return err
		}
	}
	again := newReceived()
	sub, err = connect(options("go-kept", false).SetDefaultPublishHandler(again.handler))
	if err != nil {
		return err
	}
	defer sub.Disconnect(100)
	got, err := again.until(100)
	if err != nil {
		return err
	}
	return numbered(got, "k", 100)
}

// retained: the gate's state, retained at QoS 1, reaches a later subscriber with RETAIN set;
// an empty retained message clears it.
func retained() error {
	pub, err := connect(options("go-gate", true))
	if err != nil {
		return err
	}
	defer pub.Disconnect(100)
	if err := done(pub.Publish("go/gate/1AB/state", 1, true, "closed"), "publish"); err != nil {
		return err
	}
	r := newReceived()
	sub, err := connect(options("go-gate-watch", true))
	if err != nil {
		return err
	}
	if err := done(sub.Subscribe("go/gate/#", 1, r.handler), "subscribe"); err != nil {
		return err
	}
	got, err := r.until(1)
	if err != nil {
		return err
	}
	if got[0] != "closed" || !r.retained[0] {
		return fmt.Errorf("got %q retained=%v", got[0], r.retained[0])
	}
	sub.Disconnect(100)
	if err := done(pub.Publish("go/gate/1AB/state", 1, true, ""), "clear"); err != nil {
		return err
	}
	// A later subscriber gets nothing retained: the app's own marker comes first.
	later := newReceived()
	sub, err = connect(options("go-gate-late", true))
	if err != nil {
		return err
	}
	defer sub.Disconnect(100)
	if err := done(sub.Subscribe("go/gate/#", 1, later.handler), "subscribe"); err != nil {
		return err
	}
	if err := done(pub.Publish("go/gate/marker", 1, false, "marker"), "marker"); err != nil {
		return err
	}
	if err := later.expectOne("marker"); err != nil {
		return fmt.Errorf("after the retained message was cleared: %v", err)
	}
	return nil
}

// requestResponse: the seed's pattern, an app asking devices for their status and matching
// the answers by the correlation id in the payload.
func requestResponse() error {
	device, err := connect(options("go-radar", true))
	if err != nil {
		return err
	}
	defer device.Disconnect(100)
	answer := func(c mqtt.Client, m mqtt.Message) {
		id := strings.TrimPrefix(m.Topic(), "detrd/status/request/")
		c.Publish("detrd/status/response/"+id, 1, false, "ok:"+string(m.Payload()))
	}
	if err := done(device.Subscribe("detrd/status/request/+", 1, answer), "device subscribe"); err != nil {
		return err
	}
	r := newReceived()
	app, err := connect(options("go-app", true))
	if err != nil {
		return err
	}
	defer app.Disconnect(100)
	if err := done(app.Subscribe("detrd/status/response/+", 1, r.handler), "app subscribe"); err != nil {
		return err
	}
	for i := 0; i < 100; i++ {
		topic := "detrd/status/request/1AB.ENTER.DETRD"
		if err := done(app.Publish(topic, 1, false, "c"+strconv.Itoa(i)), "request"); err != nil {
			return err
		}
		got, err := r.until(i + 1)
		if err != nil {
			return err
		}
		if got[i] != "ok:c"+strconv.Itoa(i) {
			return fmt.Errorf("answer %d is %q", i, got[i])
		}
	}
	return nil
}

// gateTopic is where the TLS and WebSocket scenarios' app asks the gate.
const gateTopic = "detrd/status/request/1AB.ENTER.GATE"

// gateAndApp connects a gate subscribed at QoS 1 to gateTopic and an app, as prefix-gate and
// prefix-app, over tlsConfig when it is not nil; what the gate receives goes to the returned
// collector. The caller disconnects both.
func gateAndApp(prefix string, tlsConfig *tls.Config) (mqtt.Client, mqtt.Client, *received, error) {
	dial := func(id string) (mqtt.Client, error) {
		o := options(prefix+"-"+id, true)
		if tlsConfig != nil {
			o.SetTLSConfig(tlsConfig)
		}
		return connect(o)
	}
	r := newReceived()
	gate, err := dial("gate")
	if err != nil {
		return nil, nil, nil, err
	}
	if err := done(gate.Subscribe(gateTopic, 1, r.handler), "subscribe"); err != nil {
		gate.Disconnect(100)
		return nil, nil, nil, err
	}
	app, err := dial("app")
	if err != nil {
		gate.Disconnect(100)
		return nil, nil, nil, err
	}
	return gate, app, r, nil
}

// overTLS: a gate subscribed over TLS gets an app's QoS 1 request over TLS.
func overTLS(ca string, cert []string) error {
	pem, err := os.ReadFile(ca)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return fmt.Errorf("no certificate in %s", ca)
	}
	config := &tls.Config{RootCAs: roots}
	if len(cert) == 2 {
		pair, err := tls.LoadX509KeyPair(cert[0], cert[1])
		if err != nil {
			return err
		}
		config.Certificates = []tls.Certificate{pair}
	}
	gate, app, r, err := gateAndApp("go-tls", config)
	if err != nil {
		return err
	}
	defer gate.Disconnect(100)
	defer app.Disconnect(100)
	if err := done(app.Publish(gateTopic, 1, false, "status?"), "publish"); err != nil {
		return err
	}
	return r.expectOne("status?")
}

// overWebSocket: a gate and an app, both over WebSocket, 100 QoS 1 requests in turn, each
// waited for.
func overWebSocket() error {
	gate, app, r, err := gateAndApp("go-ws", nil)
	if err != nil {
		return err
	}
	defer gate.Disconnect(100)
	defer app.Disconnect(100)
	for i := 0; i < 100; i++ {
		if err := done(app.Publish(gateTopic, 1, false, "w"+strconv.Itoa(i)), "publish"); err != nil {
			return err
		}
	}
	got, err := r.until(100)
	if err != nil {
		return err
	}
	return numbered(got, "w", 100)
}

// report prints a scenario's outcome as one JSON line.
func report(name string, err error) {
	line := map[string]interface{}{"name": name, "ok": err == nil}
	if err != nil {
		line["detail"] = err.Error()
	}
	out, _ := json.Marshal(line)
	fmt.Println(string(out))
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: gopaho scenarios|hold-will|ws PORT | gopaho tls PORT CA [CERT KEY]")
		os.Exit(2)
	}
	broker = "tcp://127.0.0.1:" + os.Args[2]
	switch os.Args[1] {
	case "ws":
		broker = "ws://127.0.0.1:" + os.Args[2] + "/mqtt"
		report("ws", overWebSocket())
	case "tls":
		if len(os.Args) != 4 && len(os.Args) != 6 {
			fmt.Fprintln(os.Stderr, "usage: gopaho tls PORT CA [CERT KEY]")
			os.Exit(2)
		}
		broker = "ssl://127.0.0.1:" + os.Args[2]
		report("tls", overTLS(os.Args[3], os.Args[4:]))
	case "scenarios":
		scenarios := []struct {
			name string
			run  func() error
		}{
			{"stop_and_wait_qos0", stopAndWait(0)},
			{"stop_and_wait_qos1", stopAndWait(1)},
			{"stop_and_wait_qos2", stopAndWait(2)},
			{"kept_session", keptSession},
			{"retained", retained},
			{"request_response", requestResponse},
		}
		for _, s := range scenarios {
			report(s.name, s.run())
		}
	case "hold-will":
		o := options("go-gateway", true).SetWill("go/will/gateway", "gateway lost", 1, false)
		if _, err := connect(o); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("connected")
		select {}
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}
