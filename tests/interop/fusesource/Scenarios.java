// The FuseSource MQTT client for Java (Debian's libmqtt-client-java, the client of Apache
// ActiveMQ's and Camel's MQTT tooling) against a broker on 127.0.0.1:PORT, through its blocking
// API, as a Java service of a fleet would use it. It speaks MQTT 3.1 ("MQIsdp") unless told
// 3.1.1.
//
//   java Scenarios scenarios PORT   runs each scenario, printing one JSON line per scenario:
//                                   {"name": ..., "ok": true|false, "detail": ...}
//   java Scenarios hold-will PORT   connects with a will on java/will/gateway, prints
//                                   "connected" and waits to be killed (60 s at most)
//
// Every wait is bounded: connects are tried once, and each receive has a timeout.

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

import org.fusesource.mqtt.client.BlockingConnection;
import org.fusesource.mqtt.client.MQTT;
import org.fusesource.mqtt.client.Message;
import org.fusesource.mqtt.client.QoS;
import org.fusesource.mqtt.client.Topic;

public class Scenarios {
    /** How long any one expected message may take, in seconds. */
    static final long WAIT = 10;

    static int port;

    /** A scenario that failed, with what it saw. */
    static class Failed extends Exception {
        Failed(String detail) {
            super(detail);
        }
    }

    interface Scenario {
        void run() throws Exception;
    }

    /** A connected client speaking `version` ("3.1" or "3.1.1"), tried once, never reconnecting. */
    static BlockingConnection connect(String id, boolean clean, String version) throws Exception {
        MQTT mqtt = new MQTT();
        mqtt.setHost("127.0.0.1", port);
        mqtt.setClientId(id);
        mqtt.setCleanSession(clean);
        mqtt.setVersion(version);
        mqtt.setConnectAttemptsMax(1);
        mqtt.setReconnectAttemptsMax(0);
        BlockingConnection c = mqtt.blockingConnection();
        c.connect();
        return c;
    }

    static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    /** The next message's payload, acknowledged (PUBACK, or PUBREC), or a failure after WAIT. */
    static Message next(BlockingConnection c, String waitingFor) throws Exception {
        Message m = c.receive(WAIT, TimeUnit.SECONDS);
        if (m == null) {
            throw new Failed("no message within " + WAIT + " s, waiting for " + waitingFor);
        }
        m.ack();
        return m;
    }

    static String text(Message m) {
        return new String(m.getPayload(), StandardCharsets.UTF_8);
    }

    static void expect(Message m, String topic, String payload) throws Failed {
        if (!m.getTopic().equals(topic) || !text(m).equals(payload)) {
            throw new Failed("got " + m.getTopic() + " \"" + text(m) + "\", expected " + topic
                    + " \"" + payload + "\"");
        }
    }

    /**
     * Each publish waited for (its PUBACK or PUBCOMP, or its write at QoS 0) and then its
     * delivery, as a device and the service reading it go: `count` messages reach the
     * subscriber once each, in order, then an end marker (nothing twice before it).
     */
    static Scenario stopAndWait(String version, QoS qos, int count) {
        return () -> {
            String topic = "java/stream/" + version + "/" + qos.ordinal();
            String tag = version.replace('.', '_') + "-" + qos.ordinal();
            BlockingConnection sub = connect("java-sub-" + tag, true, version);
            BlockingConnection pub = connect("java-pub-" + tag, true, version);
            try {
                byte[] granted = sub.subscribe(new Topic[] {new Topic(topic, qos)});
                if (granted.length != 1 || granted[0] != qos.ordinal()) {
                    throw new Failed("granted QoS " + (granted.length == 1 ? granted[0] : -1));
                }
                for (int i = 0; i < count; i++) {
                    pub.publish(topic, bytes("m" + i), qos, false);
                    expect(next(sub, "m" + i), topic, "m" + i);
                }
                pub.publish(topic, bytes("end"), qos, false);
                expect(next(sub, "end"), topic, "end");
            } finally {
                pub.disconnect();
                sub.disconnect();
            }
        };
    }

    /**
     * A CleanSession 0 subscriber away while QoS 1 and 2 messages are published gets them all
     * when it connects again, without subscribing again, each topic's in order.
     */
    static Scenario keptSession() {
        return () -> {
            BlockingConnection sub = connect("java-kept", false, "3.1.1");
            sub.subscribe(new Topic[] {
                new Topic("java/kept/1", QoS.AT_LEAST_ONCE),
                new Topic("java/kept/2", QoS.EXACTLY_ONCE)
            });
            sub.disconnect();
            BlockingConnection pub = connect("java-kept-pub", true, "3.1.1");
            int each = 50;
            for (int i = 0; i < each; i++) {
                pub.publish("java/kept/1", bytes("a" + i), QoS.AT_LEAST_ONCE, false);
                pub.publish("java/kept/2", bytes("b" + i), QoS.EXACTLY_ONCE, false);
            }
            pub.disconnect();
            sub = connect("java-kept", false, "3.1.1");
            try {
                List<String> first = new ArrayList<>();
                List<String> second = new ArrayList<>();
                for (int i = 0; i < 2 * each; i++) {
                    Message m = next(sub, "message " + i + " of " + 2 * each);
                    (m.getTopic().equals("java/kept/1") ? first : second).add(text(m));
                }
                for (int i = 0; i < each; i++) {
                    if (i >= first.size() || !first.get(i).equals("a" + i)) {
                        throw new Failed("QoS 1 messages out of order or missing: " + first);
                    }
                    if (i >= second.size() || !second.get(i).equals("b" + i)) {
                        throw new Failed("QoS 2 messages out of order or missing: " + second);
                    }
                }
            } finally {
                sub.disconnect();
                // Ends the kept session.
                connect("java-kept", true, "3.1.1").disconnect();
            }
        };
    }

    /**
     * A retained message reaches a later subscriber; an empty retained message removes it, so
     * that the next subscriber's first message is a marker published after it subscribed.
     */
    static Scenario retained() {
        return () -> {
            BlockingConnection pub = connect("java-retainer", true, "3.1.1");
            try {
                pub.publish("java/retained/gate", bytes("closed"), QoS.AT_LEAST_ONCE, true);
                BlockingConnection first = connect("java-retained-1", true, "3.1.1");
                first.subscribe(new Topic[] {new Topic("java/retained/#", QoS.AT_LEAST_ONCE)});
                expect(next(first, "the retained message"), "java/retained/gate", "closed");
                first.disconnect();
                pub.publish("java/retained/gate", new byte[0], QoS.AT_LEAST_ONCE, true);
                BlockingConnection second = connect("java-retained-2", true, "3.1.1");
                second.subscribe(new Topic[] {new Topic("java/retained/#", QoS.AT_LEAST_ONCE)});
                pub.publish("java/retained/marker", bytes("after"), QoS.AT_LEAST_ONCE, false);
                expect(next(second, "the marker"), "java/retained/marker", "after");
                second.disconnect();
            } finally {
                pub.disconnect();
            }
        };
    }

    static String json(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            if (ch == '"' || ch == '\\') {
                b.append('\\').append(ch);
            } else if (ch < 0x20) {
                b.append(String.format("\\u%04x", (int) ch));
            } else {
                b.append(ch);
            }
        }
        return b.append('"').toString();
    }

    static void report(String name, Scenario scenario) {
        String detail = "";
        boolean ok;
        try {
            scenario.run();
            ok = true;
        } catch (Exception e) {
            ok = false;
            detail = e.toString();
        }
        System.out.println("{\"name\": " + json(name) + ", \"ok\": " + ok + ", \"detail\": "
                + json(detail) + "}");
        System.out.flush();
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: Scenarios scenarios|hold-will PORT");
            System.exit(2);
        }
        port = Integer.parseInt(args[1]);
        switch (args[0]) {
            case "scenarios":
                report("stop_and_wait_31_qos0", stopAndWait("3.1", QoS.AT_MOST_ONCE, 200));
                report("stop_and_wait_31_qos1", stopAndWait("3.1", QoS.AT_LEAST_ONCE, 200));
                report("stop_and_wait_31_qos2", stopAndWait("3.1", QoS.EXACTLY_ONCE, 200));
                report("stop_and_wait_311_qos1", stopAndWait("3.1.1", QoS.AT_LEAST_ONCE, 200));
                report("kept_session", keptSession());
                report("retained", retained());
                // hawtdispatch's threads are not daemons.
                System.exit(0);
                break;
            case "hold-will": {
                MQTT mqtt = new MQTT();
                mqtt.setHost("127.0.0.1", port);
                mqtt.setClientId("java-gateway");
                mqtt.setVersion("3.1.1");
                mqtt.setConnectAttemptsMax(1);
                mqtt.setReconnectAttemptsMax(0);
                mqtt.setWillTopic("java/will/gateway");
                mqtt.setWillMessage("gateway lost");
                mqtt.setWillQos(QoS.AT_LEAST_ONCE);
                BlockingConnection c = mqtt.blockingConnection();
                c.connect();
                System.out.println("connected");
                System.out.flush();
                Thread.sleep(60_000);
                System.exit(1);
                break;
            }
            default:
                System.err.println("unknown mode " + args[0]);
                System.exit(2);
        }
    }
}
