// The JDK's own HTTP client as users write it: HttpClient.newHttpClient() prefers
// HTTP/2, so on a cleartext URL it offers "Upgrade: h2c" with the request.
// Run with the source launcher (JDK 11+): java Client.java URL REQUEST_ID BODY_FILE
// Prints the status, the negotiated version, then the body.

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Path;
import java.time.Duration;

public class Client {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build();
        HttpRequest request = HttpRequest.newBuilder(URI.create(args[0]))
            .timeout(Duration.ofSeconds(20))
            .header("Content-Type", "application/json")
            .header("X-Request-Id", args[1])
            .POST(HttpRequest.BodyPublishers.ofFile(Path.of(args[2])))
            .build();
        HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
        System.out.println(response.statusCode());
        System.out.println(response.version());
        System.out.print(response.body());
    }
}
